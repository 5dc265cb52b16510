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
            let name = std::thread::current().name().map(str::to_owned).unwrap_or_default();
            // tokio names its workers `tokio-runtime-worker` or `tokio-rt-worker`, by version.
            if !name.starts_with("tokio-r") && !name.starts_with("case ") {
                default(info);
            }
        }));
    });
}
