//! Delivery sources built into the app. A broker adapter lives in a crate of its own and
//! implements `payments_ports::DeliverySource` the same way.

pub mod lines;
