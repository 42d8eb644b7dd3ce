//! Test doubles shared by the exchange tests: a fake router and a fake
//! exchange actor that record what they are told.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ddm_admin_api::latest::RouterKind;
use ractor::{Actor, ActorProcessingErr};
use tokio::sync::mpsc;

use super::actor::{ExchangeMsg, ExchangeRef};
use super::wire::v3;
use crate::router::ImportPermit;
use crate::router::{RouterMsg, RouterRef};
use ddm_proto::PeerId;

/// What the fake router was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// `RouterMsg::PeerUp`.
    PeerUp(PeerId, RouterKind),
    /// `RouterMsg::Import`.
    Import(PeerId, v3::Update),
    /// `RouterMsg::PullResult`.
    PullResult(PeerId, v3::PullResponse),
    /// `RouterMsg::PullFor` (answered with the canned response).
    PullFor(PeerId),
    /// `RouterMsg::Delivered`: pushes delivered through this count.
    Delivered(PeerId, u64),
    /// `ExchangeMsg::Pushed`, to a fake exchange actor.
    Pushed(v3::Update),
    /// `ExchangeMsg::PeerPulled`, to a fake exchange actor: the pulling
    /// session, and whether the answer was late.
    PeerPulled(Option<u64>, bool),
    /// `ExchangeMsg::PushRefused`, to a fake exchange actor.
    PushRefused,
}

/// Stands in for the router: records what exchange tells it and
/// answers pulls with a canned response.
pub(crate) struct FakeRouter;

/// What a [`FakeRouter`] keeps: where it reports, its canned pull answer,
/// how many imports came with an import permit, and, when `Some`, the pull
/// slots of the answers it was handed, kept until the test lets them go
/// (`None`: given back at once).
type FakeRouterState =
    (mpsc::UnboundedSender<Seen>, v3::PullResponse, Arc<AtomicU64>, KeptSlots);

/// Pull slots a [`FakeRouter`] keeps (see [`FakeRouterState`]).
pub(crate) type KeptSlots = Arc<Mutex<Option<Vec<ImportPermit>>>>;

impl Actor for FakeRouter {
    type Msg = RouterMsg;
    type State = FakeRouterState;
    type Arguments = FakeRouterState;

    async fn pre_start(
        &self,
        _: RouterRef,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: RouterRef,
        msg: RouterMsg,
        (tx, answer, permitted, kept): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = match msg {
            RouterMsg::PeerUp { peer, kind, .. } => {
                tx.send(Seen::PeerUp(peer, kind))
            }
            RouterMsg::Import { peer, update, permit } => {
                if permit.is_some() {
                    permitted.fetch_add(1, Ordering::Relaxed);
                }
                tx.send(Seen::Import(peer, update.to_wire()))
            }
            RouterMsg::PullResult { peer, response, slot } => {
                if let (Some(kept), Some(slot)) =
                    (kept.lock().unwrap().as_mut(), slot)
                {
                    kept.push(slot);
                }
                tx.send(Seen::PullResult(peer, response.to_wire()))
            }
            RouterMsg::PullFor(peer, reply) => {
                let _ = reply.send(answer.clone());
                tx.send(Seen::PullFor(peer))
            }
            RouterMsg::Delivered { peer, through, .. } => {
                tx.send(Seen::Delivered(peer, through))
            }
            _ => Ok(()),
        };
        Ok(())
    }
}

/// A fake router answering pulls with `answer`.
pub(crate) async fn fake_router(
    answer: v3::PullResponse,
) -> (RouterRef, mpsc::UnboundedReceiver<Seen>) {
    let (r, rx, _, _) = fake_router_keeping(answer, false).await;
    (r, rx)
}

/// A fake router answering pulls with `answer`, the count of imports it
/// was handed with an import permit (which it gives back at once), and,
/// with `keep`, the pull slots it is handed (in the returned list, while
/// it is `Some`).
pub(crate) async fn fake_router_keeping(
    answer: v3::PullResponse,
    keep: bool,
) -> (RouterRef, mpsc::UnboundedReceiver<Seen>, Arc<AtomicU64>, KeptSlots) {
    let (tx, rx) = mpsc::unbounded_channel();
    let permitted = Arc::new(AtomicU64::new(0));
    let kept = Arc::new(Mutex::new(keep.then(Vec::new)));
    let state = (tx, answer, Arc::clone(&permitted), Arc::clone(&kept));
    let (r, _) = Actor::spawn(None, FakeRouter, state).await.unwrap();
    (r, rx, permitted, kept)
}

/// Stands in for the exchange actor, for the server alone: records what
/// the server tells it.
pub(crate) struct FakeExchange;

impl Actor for FakeExchange {
    type Msg = ExchangeMsg;
    type State = mpsc::UnboundedSender<Seen>;
    type Arguments = mpsc::UnboundedSender<Seen>;

    async fn pre_start(
        &self,
        _: ExchangeRef,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _: ExchangeRef,
        msg: ExchangeMsg,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = match msg {
            ExchangeMsg::Pushed(u, _) => tx.send(Seen::Pushed(u.to_wire())),
            ExchangeMsg::PeerPulled { session, late, .. } => {
                tx.send(Seen::PeerPulled(session, late))
            }
            ExchangeMsg::PushRefused => tx.send(Seen::PushRefused),
            _ => Ok(()),
        };
        Ok(())
    }
}

/// A fake router answering pulls with `answer` and a fake exchange actor,
/// both recording into one channel.
pub(crate) async fn fake_router_and_exchange(
    answer: v3::PullResponse,
) -> (RouterRef, ExchangeRef, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = (tx.clone(), answer, Arc::default(), Arc::default());
    let (r, _) = Actor::spawn(None, FakeRouter, state).await.unwrap();
    let (x, _) = Actor::spawn(None, FakeExchange, tx).await.unwrap();
    (r, x, rx)
}
