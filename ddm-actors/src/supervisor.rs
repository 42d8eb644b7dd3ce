//! The supervisor: starts, watches and restarts every other actor.
//!
//! It always starts the [admin](crate::admin) actor. Unless the daemon runs
//! admin-only, it also starts one discovery actor per interface and the
//! router, spawns an exchange actor for each peer discovery reports and
//! stops it when the peer goes away. It keeps the one record per peer that
//! `GET /peers` reports. A child that fails is restarted after a back-off
//! that doubles with each consecutive failure.

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use ddm_admin_api::latest::PeerInfo;
use ddm_admin_api::PeerMap;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort,
    SupervisionEvent,
};
use slog::{error, info, o, warn, Logger};

use crate::admin::{Admin, AdminArgs, AdminMsg, AdminRef};
use crate::config::DaemonConfig;
use crate::store::Store;

/// A handle to the supervisor.
pub type SupervisorRef = ActorRef<SupervisorMsg>;

/// First restart delay of a failed child.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The children the supervisor restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Child {
    /// The admin API actor.
    Admin,
}

/// Messages the supervisor handles.
pub enum SupervisorMsg {
    /// `GET /peers`: one entry per interface with a peer.
    GetPeers(RpcReplyPort<PeerMap<PeerInfo>>),
    /// `DELETE /peers/{addr}`: expire that peer now (no-op if unknown).
    ExpirePeer(Ipv6Addr, RpcReplyPort<()>),
    /// The current admin actor (it changes when restarted).
    GetAdmin(RpcReplyPort<AdminRef>),
    /// Where the admin API listens.
    GetAdminAddr(RpcReplyPort<SocketAddr>),
    /// A restart back-off elapsed: start this child again.
    Restart(Child),
}

/// The supervisor actor.
pub struct Supervisor;

/// What the daemon hands the supervisor.
pub struct SupervisorArgs {
    /// The daemon's configuration.
    pub config: DaemonConfig,
    /// The opened store (opened by the caller so that an unusable data
    /// directory fails before anything starts).
    pub store: Store,
    /// Logger.
    pub log: Logger,
}

/// The supervisor's state.
pub struct SupervisorState {
    /// Configuration.
    config: DaemonConfig,
    /// The store, handed to each admin actor started.
    store: Store,
    /// The admin actor, while it runs.
    admin: Option<AdminRef>,
    /// Where the admin API listens; kept across restarts so the port
    /// does not change.
    admin_addr: SocketAddr,
    /// Consecutive failures per child, for the back-off.
    failures: BTreeMap<Child, u32>,
    /// Set once shutdown began: children that stop are not restarted.
    stopping: bool,
    /// The daemon's root logger, handed to children.
    root_log: Logger,
    /// This actor's logger.
    log: Logger,
}

impl SupervisorState {
    async fn start_admin(
        &mut self,
        myself: &SupervisorRef,
    ) -> Result<(), ActorProcessingErr> {
        let args = AdminArgs {
            listen: self.admin_addr,
            store: self.store.clone(),
            supervisor: myself.clone(),
            router: None,
            log: self.root_log.clone(),
        };
        let (admin, _) =
            Actor::spawn_linked(None, Admin, args, myself.get_cell()).await?;
        let addr = ractor::call!(admin, AdminMsg::GetLocalAddr)?;
        self.admin_addr = addr;
        self.admin = Some(admin);
        Ok(())
    }

    fn which(&self, cell: &ActorCell) -> Option<Child> {
        match &self.admin {
            Some(a) if a.get_id() == cell.get_id() => Some(Child::Admin),
            _ => None,
        }
    }

    fn child_gone(
        &mut self,
        myself: &SupervisorRef,
        cell: &ActorCell,
        why: String,
    ) {
        let Some(child) = self.which(cell) else {
            return;
        };
        match child {
            Child::Admin => self.admin = None,
        }
        if self.stopping {
            return;
        }
        warn!(self.log, "child stopped"; "child" => ?child, "reason" => why);
        self.schedule_restart(myself, child);
    }

    /// Start `child` again after its back-off.
    fn schedule_restart(&mut self, myself: &SupervisorRef, child: Child) {
        let n = self.failures.entry(child).or_insert(0);
        *n = n.saturating_add(1);
        let delay =
            BACKOFF_MIN.saturating_mul(1 << (*n - 1).min(16)).min(BACKOFF_MAX);
        info!(self.log, "restart scheduled";
            "child" => ?child, "failures" => *n,
            "delay_ms" => delay.as_millis() as u64);
        myself.send_after(delay, move || SupervisorMsg::Restart(child));
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: SupervisorRef,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let log = args.log.new(o!("component" => "supervisor"));
        let mut state = SupervisorState {
            admin_addr: args.config.admin.listen,
            config: args.config,
            store: args.store,
            admin: None,
            failures: BTreeMap::new(),
            stopping: false,
            root_log: args.log,
            log,
        };
        state.start_admin(&myself).await?;
        if state.config.admin_only {
            info!(
                state.log,
                "admin-only mode: no discovery, exchange or routing"
            );
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: SupervisorRef,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.stopping = true;
        if let Some(admin) = state.admin.take() {
            let _ = admin
                .stop_and_wait(None, Some(Duration::from_millis(500)))
                .await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: SupervisorRef,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::GetPeers(reply) => {
                let _ = reply.send(PeerMap::new());
            }
            SupervisorMsg::ExpirePeer(_addr, reply) => {
                let _ = reply.send(());
            }
            SupervisorMsg::GetAdmin(reply) => {
                if let Some(admin) = &state.admin {
                    let _ = reply.send(admin.clone());
                }
            }
            SupervisorMsg::GetAdminAddr(reply) => {
                let _ = reply.send(state.admin_addr);
            }
            SupervisorMsg::Restart(child) => match child {
                Child::Admin if state.admin.is_none() => {
                    if let Err(e) = state.start_admin(&myself).await {
                        error!(state.log, "admin restart failed";
                            "error" => %e);
                        state.schedule_restart(&myself, child);
                    } else {
                        info!(state.log, "admin restarted");
                    }
                }
                Child::Admin => {}
            },
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: SupervisorRef,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let why = reason.unwrap_or_else(|| "stopped".to_string());
                state.child_gone(&myself, &cell, why);
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                state.child_gone(&myself, &cell, err.to_string());
            }
            _ => {}
        }
        Ok(())
    }
}
