//! Running a command on another host with OpenSSH's client, logged in as libvirt's
//! `qemu+ssh` transport would: the same user, port and key, and never a prompt.

use serde::{Deserialize, Serialize};

/// Where and how ssh logs in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshTarget {
    /// Host name or address (an IPv6 address without brackets).
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Private key to log in with (libvirt's `keyfile` URI parameter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<String>,
    /// Accept a host key not yet known (libvirt's `no_verify=1`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_verify: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{0:?} is not a host name ssh can be given")]
    BadHost(String),
    #[error("{0:?} is not a user name ssh can be given")]
    BadUser(String),
}

/// A word ssh would take for an option, or that holds what no host or user name has.
fn unfit(word: &str) -> bool {
    word.is_empty() || word.starts_with('-') || word.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl SshTarget {
    /// The ssh command line that runs `remote` there: `ssh -o BatchMode=yes [-l USER]
    /// [-p PORT] [-i KEY] [-o StrictHostKeyChecking=no] -- HOST REMOTE…`. BatchMode: a
    /// password or host-key question fails at once instead of waiting for an answer
    /// nobody gives. ssh joins the remote words with spaces for the remote user's shell:
    /// the caller quotes what must stay one word.
    pub fn command(&self, remote: &[&str]) -> Result<Vec<String>, SshError> {
        if unfit(&self.host) {
            return Err(SshError::BadHost(self.host.clone()));
        }
        let mut argv: Vec<String> = ["ssh", "-o", "BatchMode=yes"].map(str::to_owned).to_vec();
        if let Some(user) = &self.user {
            if unfit(user) {
                return Err(SshError::BadUser(user.clone()));
            }
            argv.extend(["-l".to_owned(), user.clone()]);
        }
        if let Some(port) = self.port {
            argv.extend(["-p".to_owned(), port.to_string()]);
        }
        if let Some(key) = &self.keyfile {
            argv.extend(["-i".to_owned(), key.clone()]);
        }
        if self.no_verify {
            argv.extend(["-o".to_owned(), "StrictHostKeyChecking=no".to_owned()]);
        }
        argv.extend(["--".to_owned(), self.host.clone()]);
        argv.extend(remote.iter().map(|w| (*w).to_owned()));
        Ok(argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_in_as_told_and_never_asks() {
        let t = SshTarget {
            host: "fe80::1".into(),
            user: Some("ops".into()),
            port: Some(2222),
            keyfile: Some("/k/id".into()),
            no_verify: true,
        };
        assert_eq!(
            t.command(&["migtrace", "agent"]).expect("argv"),
            [
                "ssh",
                "-o",
                "BatchMode=yes",
                "-l",
                "ops",
                "-p",
                "2222",
                "-i",
                "/k/id",
                "-o",
                "StrictHostKeyChecking=no",
                "--",
                "fe80::1",
                "migtrace",
                "agent"
            ]
        );
        let plain = SshTarget { host: "h1".into(), ..SshTarget::default() };
        assert_eq!(plain.command(&["true"]).expect("argv"), ["ssh", "-o", "BatchMode=yes", "--", "h1", "true"]);
        for bad in ["-oProxyCommand=touch /tmp/pwned", "", "a b"] {
            let host = SshTarget { host: bad.into(), ..SshTarget::default() };
            assert!(matches!(host.command(&[]), Err(SshError::BadHost(_))), "{bad:?}");
            let user = SshTarget { host: "h".into(), user: Some(bad.into()), ..SshTarget::default() };
            assert!(matches!(user.command(&[]), Err(SshError::BadUser(_))), "{bad:?}");
        }
    }
}
