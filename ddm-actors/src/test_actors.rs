//! Stand-in actors shared by the unit tests.

use std::marker::PhantomData;

use ractor::{Actor, ActorProcessingErr, ActorRef, Message};
use tokio::sync::mpsc;

/// Stands in for whoever receives `M` (the supervisor, a failure
/// listener): forwards every message to the test's channel.
pub(crate) struct Forward<M>(PhantomData<fn() -> M>);

impl<M> Forward<M> {
    /// A forwarder of `M`.
    pub(crate) fn new() -> Self {
        Forward(PhantomData)
    }
}

impl<M: Message> Actor for Forward<M> {
    type Msg = M;
    type State = mpsc::UnboundedSender<M>;
    type Arguments = mpsc::UnboundedSender<M>;

    async fn pre_start(
        &self,
        _: ActorRef<M>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _: ActorRef<M>,
        msg: M,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(msg);
        Ok(())
    }
}
