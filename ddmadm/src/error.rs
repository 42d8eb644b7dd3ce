//! Turning a failed request into the one line ddmadm prints.

use std::fmt;
use std::net::SocketAddr;

use ddm_admin_client::{types, Error};

/// Why a command failed, ready to print as one line (without the
/// `ddmadm: ` prefix).
#[derive(Debug)]
pub struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Failure {
    /// Describe `err`, a failure of a request to the admin API at `addr`.
    pub fn from_client(addr: SocketAddr, err: Error<types::Error>) -> Self {
        let text = match err {
            Error::CommunicationError(e)
                if e.is_connect() && e.is_timeout() =>
            {
                format!("cannot reach ddmd at {addr}: connection timed out")
            }
            Error::CommunicationError(e) if e.is_connect() => {
                format!("cannot reach ddmd at {addr}: {}", io_cause(&e))
            }
            Error::CommunicationError(e) if e.is_timeout() => {
                format!("ddmd at {addr} did not answer in time")
            }
            Error::CommunicationError(e) | Error::ResponseBodyError(e) => {
                format!("talking to ddmd at {addr} failed: {}", chain(&e))
            }
            Error::ErrorResponse(rv) => {
                let status = rv.status();
                let body = rv.into_inner();
                // A 4xx is the request refused; a 5xx, ddmd unable to
                // carry it out (busy, restarting, its store failing).
                let what = if status.is_server_error() {
                    "ddmd could not carry out the request"
                } else {
                    "ddmd refused the request"
                };
                match body.error_code {
                    Some(code) if !code.is_empty() => format!(
                        "{what}: {} ({code}, HTTP {})",
                        body.message,
                        status.as_u16()
                    ),
                    _ => format!(
                        "{what}: {} (HTTP {})",
                        body.message,
                        status.as_u16()
                    ),
                }
            }
            Error::UnexpectedResponse(r) => format!(
                "unexpected answer from {addr} (HTTP {}); is ddmd listening \
                 there?",
                r.status().as_u16()
            ),
            Error::InvalidResponsePayload(_, e) => {
                format!("ddmd at {addr} sent an answer ddmadm cannot read: {e}")
            }
            other => format!("request to ddmd at {addr} failed: {other}"),
        };
        Failure(one_line(&text))
    }

    /// Describe `err`, a failure to read the counters from the metrics
    /// listener at `addr`.
    pub fn from_metrics(addr: SocketAddr, err: reqwest::Error) -> Self {
        let text = if err.is_connect() {
            format!(
                "cannot reach the metrics listener of ddmd at {addr}: {} (is \
                 ddmd running with --metrics-addr?)",
                io_cause(&err)
            )
        } else if err.is_timeout() {
            format!("the metrics listener at {addr} did not answer in time")
        } else if err.is_decode() {
            format!(
                "the metrics listener at {addr} sent counters ddmadm cannot \
                 read: {}",
                chain(&err)
            )
        } else {
            format!("reading counters from {addr} failed: {}", chain(&err))
        };
        Failure(one_line(&text))
    }

    /// The metrics listener at `addr` answered `status` with `body`.
    pub fn metrics_status(addr: SocketAddr, status: u16, body: &str) -> Self {
        Failure(one_line(&format!(
            "the metrics listener at {addr} answered HTTP {status}: {}",
            body.chars().take(200).collect::<String>()
        )))
    }

    /// Output could not be written.
    pub fn output(err: std::io::Error) -> Self {
        Failure(format!("cannot write output: {err}"))
    }
}

/// The I/O reason under a connection failure, as `connection refused`
/// rather than `Connection refused (os error 111)`.
fn io_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::Other => io.to_string(),
                kind => kind.to_string(),
            };
        }
        cur = err.source();
    }
    chain(e)
}

/// An error and its causes, joined with `: `, skipping causes that the
/// error's own message already repeats.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let msg = err.to_string();
        if !text.contains(&msg) {
            text.push_str(": ");
            text.push_str(&msg);
        }
        cur = err.source();
    }
    text
}

/// Fold whitespace runs (newlines included) into single spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_folds_newlines() {
        assert_eq!(one_line("a\nb  c\r\n"), "a b c");
    }

    #[test]
    fn chain_skips_repeats() {
        let inner = std::io::Error::other("boom");
        let outer = std::io::Error::other(inner);
        assert_eq!(chain(&outer), "boom");
    }

    #[test]
    fn io_cause_names_the_kind() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(io_cause(&e), "connection refused");
    }
}
