//! The cluster's identities: a self-signed CA, the API server's serving certificate, its
//! client certificate towards the kubelet, the service-account key pair, and one static token
//! per component (token auth file) so that each runs as the user the bootstrap RBAC policy and
//! the Node authorizer expect (`system:node:<node>`, `system:kube-proxy`, ...).
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use super::layout::{self, KUBERNETES_SERVICE_IP, NODE_IP, NODE_NAME};
use crate::util::run_quiet;

/// Who each kubeconfig speaks as: (kubeconfig name, user, groups).
fn identities() -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("admin", "faultline-admin".into(), "system:masters"),
        (
            "kubelet",
            format!("system:node:{NODE_NAME}"),
            "system:nodes",
        ),
        ("kube-proxy", "system:kube-proxy".into(), ""),
        ("kube-scheduler", "system:kube-scheduler".into(), ""),
        (
            "kube-controller-manager",
            "system:kube-controller-manager".into(),
            "",
        ),
    ]
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    run_quiet(Command::new("openssl").args(args).current_dir(dir)).map(|_| ())
}

fn random_token() -> Result<String> {
    Ok(
        run_quiet(Command::new("openssl").args(["rand", "-hex", "24"]))?
            .trim()
            .to_owned(),
    )
}

/// A key and a certificate signed by the CA, with `ext` (an openssl extension file's text).
fn signed(dir: &Path, name: &str, subject: &str, ext: &str) -> Result<()> {
    let (key, csr, crt, extf) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extf), ext)?;
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr,
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &extf,
            "-out",
            &crt,
        ],
    )
}

/// Writes the PKI under `<state>/pki` and the kubeconfigs; returns nothing, everything is in
/// files ([`layout::admin_kubeconfig`], [`layout::kubeconfig_of`]).
pub fn create() -> Result<()> {
    let dir = layout::state("pki");
    std::fs::create_dir_all(&dir)?;
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=faultline-node-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    )?;
    let sans = format!(
        "subjectAltName=IP:{NODE_IP},IP:{KUBERNETES_SERVICE_IP},IP:127.0.0.1,DNS:localhost,\
         DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
         DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n"
    );
    signed(&dir, "apiserver", "/CN=kube-apiserver", &sans)?;
    signed(
        &dir,
        "apiserver-kubelet-client",
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
        "extendedKeyUsage=clientAuth\n",
    )?;
    openssl(&dir, &["genrsa", "-out", "sa.key", "2048"])?;
    openssl(&dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    let mut csv = String::new();
    std::fs::create_dir_all(layout::state("kubeconfigs"))?;
    for (i, (name, user, groups)) in identities().into_iter().enumerate() {
        let token = random_token()?;
        csv.push_str(&format!("{token},{user},uid-{i},\"{groups}\"\n"));
        let path = if name == "admin" {
            layout::admin_kubeconfig()
        } else {
            layout::kubeconfig_of(name)
        };
        write_kubeconfig(&path, &user, &token)?;
    }
    std::fs::write(dir.join("tokens.csv"), csv).context("writing tokens.csv")?;
    Ok(())
}

fn write_kubeconfig(path: &Path, user: &str, token: &str) -> Result<()> {
    let ca = layout::state("pki/ca.crt");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: faultline-node\n  cluster: {{server: \"{}\", certificate-authority: \"{}\"}}\n\
         users:\n- name: \"{user}\"\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: faultline-node\n  context: {{cluster: faultline-node, user: \"{user}\", namespace: default}}\n\
         current-context: faultline-node\n",
        layout::api_url(),
        ca.display()
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
