//! The signals that stop a run (SIGTERM from Kubernetes, SIGINT from a terminal); what
//! they undo is registered with the store's stop registry ([`egress_store::stop`]).

/// Which stop signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopSignal {
    /// SIGTERM: Kubernetes stopping the pod.
    Term,
    /// SIGINT: Ctrl-C.
    Int,
}

impl StopSignal {
    /// Its name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
        }
    }

    /// The conventional exit code (128 + signal number).
    pub(crate) fn exit_code(self) -> crate::ExitCode {
        match self {
            StopSignal::Term => crate::ExitCode::Terminated,
            StopSignal::Int => crate::ExitCode::Interrupted,
        }
    }
}

/// Wait for SIGTERM or SIGINT. If the handlers cannot be installed, never returns.
pub(crate) async fn stop_signal() -> StopSignal {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => StopSignal::Term,
        _ = int.recv() => StopSignal::Int,
    }
}
