//! A template's setup (packages and commands) runs once per template, image, backend and
//! policy, and its result is kept as a hidden snapshot (`SnapshotKind::Template`): every
//! sandbox made from the template afterwards stacks that snapshot's layers on the image and
//! starts as fast as any other (DESIGN: "A template is a spec plus setup steps whose result is
//! cached as a snapshot").

use crate::Engine;
use crate::error::{EngineError, Result};
use crate::snapshot::{SNAPSHOT, SnapshotKind, SnapshotRecord};
use agentkernel_core::{ExecRequest, SandboxSpec};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How long one setup command may run.
const SETUP_TIMEOUT: Duration = Duration::from_secs(1800);

/// Why a template's setup failed, with the end of its output.
fn setup_failed(template: &str, command: &str, code: i32, output: &[u8]) -> EngineError {
    let text = String::from_utf8_lossy(output);
    let tail: String = text
        .lines()
        .rev()
        .take(20)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    EngineError::TemplateInvalid {
        origin: template.to_string(),
        message: format!(
            "its setup failed: `{command}` exited with {code}; its output ended with:\n{tail}\nfix the template's [setup], or check that its network policy lets the package manager reach its registry"
        ),
    }
}

/// The cache's name for a setup: `tpl-` and 32 hex digits of a hash over everything that
/// decides its result.
fn cache_name(template: &str, spec: &SandboxSpec, setup: &[String]) -> String {
    let mut h = Sha256::new();
    for part in [
        template,
        &spec.image.display(),
        spec.backend.as_str(),
        spec.policy.network.as_str(),
        &spec.policy.allow_hosts.join(","),
        &serde_json::to_string(&spec.env).unwrap_or_default(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for command in setup {
        h.update(command.as_bytes());
        h.update([0]);
    }
    format!("tpl-{}", &hex::encode(h.finalize())[..32])
}

impl Engine {
    /// The layers of template `template`'s setup for `spec` (image, backend, policy): the
    /// cached ones, or made now — the setup run in a temporary sandbox, captured, the sandbox
    /// removed. Nothing is cached when the setup fails.
    pub(crate) fn template_layers(
        &self,
        template: &str,
        spec: &SandboxSpec,
        setup: &[String],
    ) -> Result<Vec<String>> {
        if setup.is_empty() {
            return Ok(Vec::new());
        }
        let name = cache_name(template, spec, setup);
        if let Some(rec) = self
            .store()?
            .get_object::<SnapshotRecord>(SNAPSHOT, &name)?
        {
            return Ok(rec.spec.layers);
        }
        let builder = format!(
            "{name}-build-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let builder: String = builder
            .chars()
            .take(agentkernel_core::name::MAX_NAME_LEN)
            .collect();
        let made = self
            .create_from(spec, &builder, &[("agentkernel.template-setup", template)])
            .and_then(|_| self.run_setup(&builder, template, setup))
            .and_then(|()| self.stop(&builder).map(drop))
            .and_then(|()| self.take_snapshot(&builder, Some(&name), SnapshotKind::Template));
        let _ = self.remove(&builder);
        match made {
            Ok(_) => {}
            // Another process cached the same setup meanwhile: use that.
            Err(EngineError::SnapshotNameTaken(_)) => {}
            Err(e) => return Err(e),
        }
        self.store()?
            .get_object::<SnapshotRecord>(SNAPSHOT, &name)?
            .map(|rec| rec.spec.layers)
            .ok_or(EngineError::SnapshotNotFound(name))
    }

    fn run_setup(&self, sandbox: &str, template: &str, setup: &[String]) -> Result<()> {
        self.start(sandbox)?;
        for command in setup {
            let req = ExecRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), command.clone()],
                env: Vec::new(),
                workdir: None,
                tty: false,
                stdin: false,
                timeout: Some(SETUP_TIMEOUT),
            };
            let mut out = Vec::new();
            let mut err = Vec::new();
            let status = {
                let mut sink = crate::collect_into(&mut out, &mut err);
                self.exec(sandbox, &req, &mut sink, Default::default())?
            };
            if status.code != 0 {
                out.extend_from_slice(&err);
                return Err(setup_failed(template, command, status.code, &out));
            }
        }
        Ok(())
    }
}
