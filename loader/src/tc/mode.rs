//! Which way TC programs attach: chosen from the layout's `[tc] attach`
//! (or `CGACCT_TC_ATTACH`), probing the kernel for `auto`, never by
//! comparing version numbers. The choice is returned to the caller, who
//! passes it on: no process-wide state.
use anyhow::{bail, Context as _, Result};

use crate::sys;

/// The environment variable that overrides the probe.
pub const ENV: &str = "CGACCT_TC_ATTACH";

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Tcx,
    Clsact,
}

/// What the layout's `[tc] attach` asks for (defined with the layout).
pub use crate::spec::layout::TcAttach as Preference;

/// The mode and why it was chosen.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Choice {
    pub mode: Mode,
    pub why: String,
}

impl Choice {
    /// One line for `apply` and `status`.
    pub fn describe(&self) -> String {
        match self.mode {
            Mode::Tcx => format!("tc programs attach as TCX links ({})", self.why),
            Mode::Clsact => format!(
                "tc programs attach as clsact bpf filters ({}); they are not bpf links, so \
                 links/tc/<interface>/<direction> pins the attached program as a marker, and \
                 `tc filter show dev <interface> ingress|egress` lists them",
                self.why
            ),
        }
    }
}

/// What is asked for and who asked: `CGACCT_TC_ATTACH` when set, else the
/// layout's `[tc] attach`.
pub fn requested(layout: Preference) -> Result<(Preference, String)> {
    Ok(match std::env::var(ENV).as_deref() {
        Ok("clsact") => (Preference::Clsact, format!("{ENV}=clsact")),
        Ok("tcx") => (Preference::Tcx, format!("{ENV}=tcx")),
        Ok("auto") => (Preference::Auto, String::new()),
        Ok("") | Err(std::env::VarError::NotPresent) => (
            layout,
            format!("the layout's [tc] attach = \"{}\"", layout.as_str()),
        ),
        Ok(other) => bail!("{ENV}={other:?} is not one of auto, tcx, clsact"),
        Err(e) => bail!("{ENV}: {e}"),
    })
}

/// The mode for what the layout asks (`auto` probes the kernel), with the
/// environment's override. The caller keeps the answer: nothing here is
/// remembered.
pub fn choose(layout: Preference) -> Result<Choice> {
    let (preference, source) = requested(layout)?;
    Ok(match preference {
        Preference::Clsact => Choice {
            mode: Mode::Clsact,
            why: source,
        },
        Preference::Tcx => Choice {
            mode: Mode::Tcx,
            why: source,
        },
        Preference::Auto => {
            match sys::bpf::probe_tcx()
                .context("probing the kernel for TCX (BPF_PROG_LOAD, BPF_LINK_CREATE)")?
            {
                true => Choice {
                    mode: Mode::Tcx,
                    why: "the kernel has TCX".into(),
                },
                false => Choice {
                    mode: Mode::Clsact,
                    why: "this kernel has no TCX: it needs Linux >= 6.6 with CONFIG_NET_XGRESS".into(),
                },
            }
        }
    })
}
