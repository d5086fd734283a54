//! The `log` facade for the shell, written through the host's log call. The SDK ships a
//! logger too, but it unwraps the host's status and would trap the VM on a refused line.

use super::host::wasm::{self, Level};

/// Writes `log` records to Envoy's log at the matching level.
struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = match record.level() {
            log::Level::Error => Level::Error,
            log::Level::Warn => Level::Warn,
            log::Level::Info => Level::Info,
            log::Level::Debug | log::Level::Trace => Level::Debug,
        };
        wasm::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// Sends the shell's `log` lines to Envoy; called once per VM. A second call (another
/// root context in the same VM) finds the logger set and changes nothing.
pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
