//! The suites must be able to fail: each runs against deliberately broken adapters, one classic bug
//! at a time, and the cases that must catch the bug are asserted to fail; a correct reference
//! adapter is the control, and passes every case.

mod source;
mod store;

/// Broken adapters make cases panic by the dozen on the runtimes' worker threads; their messages
/// are in the outcomes. Keep those out of the output, and every other panic (the assertions of
/// these tests) as usual.
fn quiet_case_panics() {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() != Some("tokio-runtime-worker") {
                default(info);
            }
        }));
    });
}
