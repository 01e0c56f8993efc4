//! Faultline in the cluster as users install it: `kubectl apply -k` of the repository's
//! `deploy/`, through an overlay (in a temporary folder) whose only content is the image
//! reference (kustomize `images:`); the manifests are not edited. Then the API token Secret
//! the README asks for, and readiness of the node agent DaemonSet and the API Deployment.
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{Cluster, deploy_dir};

/// Faultline's namespace (`deploy/namespace.yaml`).
pub const SYSTEM_NS: &str = "faultline-system";
/// The image name in `deploy/` that the overlay replaces.
pub const MANIFEST_IMAGE: &str = "ghcr.io/faultline-dev/faultline";
/// The API's Service (`deploy/api.yaml`) and port.
pub const API_SERVICE: (&str, u16) = ("fault-injection-api", 8080);

/// Faultline installed: the API through its Service, and the token.
#[derive(Debug, Clone)]
pub struct Faultline {
    /// `http://<cluster IP>:8080`: the Service, through kube-proxy.
    pub api_url: String,
    /// The bearer token from the `faultline-api-token` Secret.
    pub token: String,
}

/// An overlay folder: `resources: [<repo>/deploy]` and the image set to `image`.
pub fn overlay(image: &str) -> Result<tempfile::TempDir> {
    let (name, tag) = split_image(image)?;
    let dir = tempfile::Builder::new()
        .prefix("faultline-overlay-")
        .tempdir()?;
    let text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\nimages:\n  - name: {MANIFEST_IMAGE}\n    newName: {name}\n    newTag: \"{tag}\"\n",
        relative(dir.path(), &deploy_dir())?.display()
    );
    std::fs::write(dir.path().join("kustomization.yaml"), text)?;
    Ok(dir)
}

/// `to` relative to the folder `from` (kustomize refuses absolute paths); both absolute.
fn relative(from: &std::path::Path, to: &std::path::Path) -> Result<std::path::PathBuf> {
    let (from, to) = (from.canonicalize()?, to.canonicalize()?);
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = std::path::PathBuf::new();
    for _ in common..from.components().count() {
        out.push("..");
    }
    out.extend(to.components().skip(common));
    Ok(out)
}

/// `repo/name:tag` -> (`repo/name`, `tag`).
fn split_image(image: &str) -> Result<(&str, &str)> {
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => Ok((&image[..slash + i], &image[slash + i + 1..])),
        None => bail!("image {image} has no tag"),
    }
}

impl Cluster {
    /// `kubectl apply -k` of the overlay (idempotent), the token Secret, then waits until the
    /// DaemonSet's pod and the API are Ready and the Service answers.
    pub fn deploy_faultline(&self, timeout: Duration) -> Result<Faultline> {
        let overlay = overlay(&self.faultline_image)?;
        let dir = overlay.path().display().to_string();
        self.kubectl(&["apply", "-k", &dir])?;
        let token = self.secret_token("faultline-api-token")?;
        // The node agents' read-only API token (deploy/daemonset.yaml).
        self.secret_token("faultline-node-token")?;
        let t = format!("--timeout={}s", timeout.as_secs());
        self.kubectl(&[
            "-n",
            SYSTEM_NS,
            "rollout",
            "status",
            "daemonset/faultline-node",
            &t,
        ])?;
        self.kubectl(&[
            "-n",
            SYSTEM_NS,
            "rollout",
            "status",
            "deployment/faultline-api",
            &t,
        ])?;
        let ip = self.kubectl(&[
            "-n",
            SYSTEM_NS,
            "get",
            "service",
            API_SERVICE.0,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])?;
        let f = Faultline {
            api_url: format!("http://{}:{}", ip.trim(), API_SERVICE.1),
            token,
        };
        wait_answers(&f, timeout)?;
        Ok(f)
    }

    /// The token in Secret `name` (key `token`), creating the Secret (as the README says) when
    /// it is missing.
    fn secret_token(&self, name: &str) -> Result<String> {
        let get = || {
            self.kubectl(&[
                "-n",
                SYSTEM_NS,
                "get",
                "secret",
                name,
                "--ignore-not-found",
                "-o",
                "go-template={{.data.token | base64decode}}",
            ])
        };
        let token = get()?;
        if !token.trim().is_empty() {
            return Ok(token.trim().to_owned());
        }
        let token = format!("{:016x}{:016x}", crate::rand::u64()?, crate::rand::u64()?);
        self.kubectl(&[
            "-n",
            SYSTEM_NS,
            "create",
            "secret",
            "generic",
            name,
            &format!("--from-literal=token={token}"),
        ])?;
        Ok(token)
    }

    /// `kubectl delete -k` of the overlay, waiting until every object and pod is gone.
    pub fn delete_faultline(&self, timeout: Duration) -> Result<()> {
        let overlay = overlay(&self.faultline_image)?;
        let dir = overlay.path().display().to_string();
        let t = format!("--timeout={}s", timeout.as_secs());
        self.kubectl(&[
            "delete",
            "-k",
            &dir,
            "--ignore-not-found",
            "--wait=true",
            &t,
        ])?;
        Ok(())
    }
}

/// Waits until `GET /readyz` through the Service answers 200.
fn wait_answers(f: &Faultline, timeout: Duration) -> Result<()> {
    let client = fault_api::client::Client::new(&f.api_url).with_token(Some(f.token.clone()));
    let start = Instant::now();
    while !client.ready() {
        if start.elapsed() > timeout {
            bail!("{} did not answer /readyz within {timeout:?}", f.api_url);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_image;

    #[test]
    fn the_overlay_points_at_deploy_relatively() {
        let d = super::overlay("docker.io/x/faultline:t1").unwrap();
        let text = std::fs::read_to_string(d.path().join("kustomization.yaml")).unwrap();
        assert!(
            text.contains("  - ../") && text.contains("deploy\n"),
            "{text}"
        );
        assert!(text.contains("newTag: \"t1\""));
    }

    #[test]
    fn image_references_split_at_the_tag() {
        assert_eq!(
            split_image("docker.io/faultline-node/faultline:abc").unwrap(),
            ("docker.io/faultline-node/faultline", "abc")
        );
        assert_eq!(
            split_image("localhost:5000/f:1").unwrap(),
            ("localhost:5000/f", "1")
        );
        assert!(split_image("localhost:5000/f").is_err());
    }
}
