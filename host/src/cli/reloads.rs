//! What SIGHUP and `--watch` do while serving: swap each listener's handler
//! in from its file, or re-read the config file and apply it, all of it or
//! nothing.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, anyhow, bail};
use hotsock::runtime::read_component;
use hotsock::server::{self, Service, reload_handler};
use hotsock::sys;
use log::{info, warn};

use crate::cli::config::{Overrides, Plan};

/// What SIGHUP and `--watch` do: swap handlers in from their files, or
/// re-read the config file and apply it, all of it or nothing.
pub struct Reloads {
    config: Option<PathBuf>,
    overrides: Overrides,
    default_cache: Option<PathBuf>,
    services: Vec<Arc<Service>>,
    /// Each listener's handler file, as the config last said.
    handlers: Mutex<Vec<PathBuf>>,
    /// Each listener's name and addresses, which cannot change while serving.
    layout: Vec<(String, Vec<String>, bool)>,
    /// What else cannot change while serving, to warn when it does.
    fixed: String,
    named: bool,
}

impl Reloads {
    pub fn new(
        plan: &Plan,
        overrides: Overrides,
        default_cache: Option<PathBuf>,
        services: Vec<Arc<Service>>,
    ) -> Self {
        Reloads {
            config: plan.config.clone(),
            overrides,
            default_cache,
            services,
            handlers: Mutex::new(plan.listeners.iter().map(|l| l.handler.clone()).collect()),
            layout: plan
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.addrs.clone(), l.reuse_port))
                .collect(),
            fixed: fixed(plan),
            named: plan.named,
        }
    }

    /// `why`, naming the listener when there are several.
    fn why(&self, index: usize, why: &str) -> String {
        match self.named {
            true => format!("listener {}: {why}", self.services[index].name()),
            false => why.to_string(),
        }
    }

    /// SIGHUP.
    pub fn signal(&self) {
        let Some(config) = &self.config else {
            let handlers = sys::lock(&self.handlers).clone();
            for (index, (service, path)) in self.services.iter().zip(&handlers).enumerate() {
                reload_handler(service.registry(), path, &self.why(index, "SIGHUP"));
            }
            return;
        };
        let shown = config.display();
        let plan = Plan::new(Some(config), &self.overrides, self.default_cache.clone());
        match plan.and_then(|plan| self.apply(&plan)) {
            Ok(done) => info!("SIGHUP: re-read {shown}: {done}"),
            Err(e) => warn!("SIGHUP: {shown} not applied, nothing changed: {e:#}"),
        }
    }

    /// `--watch` saw listener `index`'s handler file change.
    pub fn file_changed(&self, index: usize) {
        let path = sys::lock(&self.handlers)[index].clone();
        reload_handler(
            self.services[index].registry(),
            &path,
            &self.why(index, "--watch"),
        );
    }

    /// Applies a re-read config: every change is checked (and every changed
    /// handler compiled) before any is made.
    fn apply(&self, plan: &Plan) -> Result<String> {
        let layout: Vec<_> = plan
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.addrs.clone(), l.reuse_port))
            .collect();
        if layout != self.layout {
            bail!(
                "listeners cannot be added, removed, renamed, moved to other addresses or have \
                 reuse-port changed while serving: restart the server (or upgrade it, SIGUSR2) \
                 for that"
            );
        }
        let mut prepared = Vec::new();
        for (listener, service) in plan.listeners.iter().zip(&self.services) {
            let name = &listener.name;
            let max = service.rules().max_connections;
            if listener.rules.max_connections != max {
                bail!(
                    "listener {name}: max-connections cannot change from {max} to {} while \
                     serving (it sized the instance pool): restart the server for that",
                    listener.rules.max_connections
                );
            }
            let registry = service.registry();
            registry
                .runtime()
                .admits(&listener.profile)
                .with_context(|| format!("listener {name}"))?;
            let bytes =
                read_component(&listener.handler).map_err(|e| anyhow!("listener {name}: {e}"))?;
            let source = listener.handler.display().to_string();
            let handler = registry
                .prepare(&listener.profile, source, &bytes)
                .map_err(|e| anyhow!("listener {name}: swap rejected ({}): {e}", e.reason()))?;
            prepared.push(handler);
        }
        let mut done = Vec::new();
        for ((listener, service), handler) in
            plan.listeners.iter().zip(&self.services).zip(prepared)
        {
            let registry = service.registry();
            registry.set_profile(listener.profile.clone())?;
            registry.set_policy(listener.policy.clone());
            service.set_rules(listener.rules.clone())?;
            let now = match handler {
                Some(handler) => match registry.install(handler) {
                    server::Swapped::Replaced { new, old } => {
                        format!("{} -> {}", old.id(), new.id())
                    }
                    server::Swapped::Unchanged(current) => current.id().to_string(),
                },
                None => format!("{} unchanged", registry.current().id()),
            };
            done.push(format!("listener {}: {now}", listener.name));
        }
        *sys::lock(&self.handlers) = plan.listeners.iter().map(|l| l.handler.clone()).collect();
        if fixed(plan) != self.fixed {
            warn!(
                "SIGHUP: admin, metrics, log-format, drain-timeout, stop-delay and cache settings \
                 apply only at start: restart the server to change them"
            );
        }
        Ok(format!(
            "{}; limits apply to new connections",
            done.join(", ")
        ))
    }
}

/// The settings a reload cannot change, as text to compare.
fn fixed(plan: &Plan) -> String {
    let admin = plan.admin.as_ref().map(|a| {
        (
            a.endpoint.to_string(),
            a.token_file.clone(),
            a.allow_remote,
            a.max_upload,
        )
    });
    format!(
        "{admin:?} {:?} {:?} {:?} {:?} {:?}",
        plan.metrics, plan.log_format, plan.drain_timeout, plan.stop_delay, plan.cache_dir
    )
}
