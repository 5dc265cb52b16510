//! The in-memory index: what duplicate and conflict decisions need, and nothing more.
//!
//! Per payment it keeps the ID's bytes in one shared arena, one 16-byte entry (where the ID is,
//! the amount and the currency, packed), and one 4-byte slot in a hash table. Entries stay in
//! journal order, so "the first N entries are durable" is one number.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use payments_ports::domain::{Amount, Currency, Payment, PaymentId};

/// One payment, packed into two words.
///
/// - `id`: the ID's offset in the arena (upper 56 bits) and its length (lower 8 bits).
/// - `value`: the amount (upper 48 bits; at most 10^12 < 2^40) and the currency as a number in
///   base 26 (lower 16 bits; at most 26^3 = 17,576).
#[derive(Clone, Copy, Debug)]
struct Entry {
    id: u64,
    value: u64,
}

impl Entry {
    fn new(id_offset: usize, payment: &Payment) -> Self {
        let [a, b, c] = payment.currency.to_bytes().map(|letter| u64::from(letter - b'A'));
        Self {
            id: ((id_offset as u64) << 8) | payment.id.len() as u64,
            value: (payment.amount.minor_units() << 16) | ((a * 26 + b) * 26 + c),
        }
    }

    fn id_range(self) -> std::ops::Range<usize> {
        let start = (self.id >> 8) as usize;
        start..start + (self.id & 0xff) as usize
    }

    fn amount(self) -> Amount {
        Amount::new(self.value >> 16).expect("the index holds only amounts that were valid when saved")
    }

    fn currency(self) -> Currency {
        let code = self.value & 0xffff;
        // Each digit is below 26, so each letter is A..=Z.
        let letters = [(code / 676) as u8, (code / 26 % 26) as u8, (code % 26) as u8].map(|d| b'A' + d);
        Currency::from_bytes(letters).expect("the index holds only currencies that were valid when saved")
    }
}

/// Every recorded payment, findable by ID, in journal order.
#[derive(Debug)]
pub(crate) struct Index {
    ids: Vec<u8>,
    entries: Vec<Entry>,
    table: HashTable<u32>,
    hasher: foldhash::quality::RandomState,
}

impl Index {
    /// An empty index with room for about `payments` payments of `id_bytes` ID bytes in all.
    pub(crate) fn with_capacity(payments: usize, id_bytes: usize) -> Self {
        Self {
            ids: Vec::with_capacity(id_bytes),
            entries: Vec::with_capacity(payments),
            table: HashTable::with_capacity(payments),
            // Randomly seeded: payment IDs come from outside, and must not be able to force collisions.
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    /// Gives back the spare capacity of the ID arena and the entries (after opening a journal,
    /// which sizes them for the shortest possible records).
    pub(crate) fn shrink_to_fit(&mut self) {
        self.ids.shrink_to_fit();
        self.entries.shrink_to_fit();
    }

    /// How many payments it holds.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn id_bytes(&self, entry: Entry) -> &[u8] {
        &self.ids[entry.id_range()]
    }

    /// The position of `id` in journal order, if present.
    pub(crate) fn find(&self, id: &PaymentId) -> Option<usize> {
        let hash = self.hasher.hash_one(id.as_bytes());
        self.table
            .find(hash, |&slot| self.id_bytes(self.entries[slot as usize]) == id.as_bytes())
            .map(|&slot| slot as usize)
    }

    /// Adds `payment` unless its ID is present, with one probe of the table: `Ok` with its new
    /// position, or `Err` with the position of the payment already there.
    pub(crate) fn insert_if_absent(&mut self, payment: &Payment) -> Result<usize, usize> {
        let hash = self.hasher.hash_one(payment.id.as_bytes());
        let position = self.entries.len();
        let (ids, entries, hasher) = (&self.ids, &self.entries, &self.hasher);
        match self.table.entry(
            hash,
            |&slot| ids[entries[slot as usize].id_range()] == *payment.id.as_bytes(),
            |&slot| hasher.hash_one(&ids[entries[slot as usize].id_range()]),
        ) {
            hashbrown::hash_table::Entry::Occupied(found) => Err(*found.get() as usize),
            hashbrown::hash_table::Entry::Vacant(slot) => {
                let position_slot =
                    u32::try_from(position).expect("the journal index holds at most u32::MAX payments");
                slot.insert(position_slot);
                self.entries.push(Entry::new(self.ids.len(), payment));
                self.ids.extend_from_slice(payment.id.as_bytes());
                Ok(position)
            }
        }
    }

    /// The payment at `position`.
    pub(crate) fn payment(&self, position: usize) -> Payment {
        let entry = self.entries[position];
        let id = std::str::from_utf8(self.id_bytes(entry)).expect("the index holds only ASCII IDs");
        let id = PaymentId::new(id).expect("the index holds only IDs that were valid when saved");
        Payment::new(id, entry.amount(), entry.currency())
    }

    /// Whether the payment at `position` has the amount and currency of `payment` (whose ID is
    /// the one at `position`): a duplicate check without building a `Payment`.
    pub(crate) fn same_value(&self, position: usize, payment: &Payment) -> bool {
        let entry = self.entries[position];
        entry.value == Entry::new(0, payment).value
    }

    /// The ID at `position`, as bytes.
    pub(crate) fn id_at(&self, position: usize) -> &[u8] {
        self.id_bytes(self.entries[position])
    }

    /// Bytes this index has allocated, and how many of them are the IDs themselves.
    pub(crate) fn memory(&self) -> (usize, usize) {
        let allocated = self.ids.capacity()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.table.allocation_size();
        (allocated, self.ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_it_holds_and_gives_it_back_unchanged() {
        let mut index = Index::with_capacity(0, 0);
        let payments: Vec<Payment> = (0..5000u64)
            .map(|i| {
                let currency = ["EUR", "USD", "ZZZ", "AAA", "JPY"][(i % 5) as usize];
                let amount = if i == 7 { Amount::MAX } else { 1 + i * 7919 };
                Payment::parse(&format!("id-{i}"), amount, currency).expect("valid")
            })
            .collect();
        for (position, payment) in payments.iter().enumerate() {
            assert_eq!(index.find(&payment.id), None);
            assert_eq!(index.insert_if_absent(payment), Ok(position));
        }
        for (position, payment) in payments.iter().enumerate() {
            assert_eq!(index.find(&payment.id), Some(position));
            assert_eq!(&index.payment(position), payment);
            assert_eq!(index.insert_if_absent(payment), Err(position), "present: not inserted twice");
        }
        assert_eq!(index.find(&PaymentId::new("id-5000").expect("valid")), None);
        assert_eq!(index.len(), 5000);
    }

    #[test]
    fn memory_per_payment_beyond_the_id_stays_far_below_a_hash_map_of_strings() {
        let payments = 100_000;
        let mut index = Index::with_capacity(0, 0);
        for i in 0..payments {
            let inserted =
                index.insert_if_absent(&Payment::parse(&format!("pay-{i:08}"), 100, "EUR").expect("valid"));
            assert!(inserted.is_ok());
        }
        let (allocated, id_bytes) = index.memory();
        let per_payment = (allocated - id_bytes) as f64 / payments as f64;
        // Grown one push at a time (the worst case: doubling leaves up to half of each vector and
        // table empty). Opening a journal sizes them from the file and does better; see
        // docs/PERFORMANCE.md for the measured figures.
        assert!(per_payment < 64.0, "{per_payment:.1} bytes per payment beyond the ID");
    }
}
