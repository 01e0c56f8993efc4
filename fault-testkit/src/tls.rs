//! A throwaway CA and a server certificate for `127.0.0.1` and `localhost`, made with the
//! `openssl` CLI in a temporary folder (removed on Drop), for agents that serve HTTPS.
use std::path::{Path, PathBuf};

use anyhow::Result;

/// A CA (`ca.crt`) and a server certificate it issued (`tls.crt`, `tls.key`: the keys of a
/// `kubernetes.io/tls` Secret), valid for a day.
pub struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    /// Makes a CA named `cn` and a server certificate for IP `127.0.0.1`, `::1` and DNS
    /// `localhost` (EC P-256 keys).
    ///
    /// Errors: `openssl` is missing or fails (its stderr is in the error).
    pub fn new(cn: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("faultline-tls-")
            .tempdir()?;
        let p = |f: &str| dir.path().join(f).display().to_string();
        let ssl = |args: &[&str]| crate::run("openssl", args).map(|_| ());
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        let subj = format!("/CN={cn}");
        let (ca_key, ca_crt) = (p("ca.key"), p("ca.crt"));
        let mut args = vec!["req", "-x509", "-nodes", "-days", "1", "-subj", &subj];
        args.extend(ec);
        args.extend(["-keyout", &ca_key, "-out", &ca_crt]);
        ssl(&args)?;
        let (key, csr, crt) = (p("tls.key"), p("tls.csr"), p("tls.crt"));
        let mut args = vec!["req", "-nodes", "-subj", "/CN=faultline-api"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr]);
        ssl(&args)?;
        let ext = p("san.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        ssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ])?;
        Ok(Self { dir })
    }

    /// The folder holding `tls.crt` and `tls.key` (for `--tls-dir`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA's certificate (PEM), which clients must trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The server's certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    /// The server's private key (PEM).
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }
}
