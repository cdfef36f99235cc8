//! systemd's readiness protocol (`Type=notify` units), as etcd speaks it:
//! `READY=1` once clients are served, `STOPPING=1` when shutting down. A
//! datagram to the socket in `$NOTIFY_SOCKET`; nothing when it is unset.

use std::os::unix::net::UnixDatagram;

/// Tells systemd the member serves clients.
pub fn ready() {
    notify("READY=1");
}

/// Tells systemd the member is stopping.
pub fn stopping() {
    notify("STOPPING=1");
}

fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        // A leading '@' names a socket in the abstract namespace.
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            socket.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "failed to notify systemd");
    }
}
