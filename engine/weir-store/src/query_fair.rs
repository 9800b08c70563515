//! Fair turns on the query threads between tenants.
//!
//! Tokio runs ready tasks first come, first served, so a tenant with three CPU-heavy
//! queries would get three times the query threads of a tenant with one. Each step of
//! a query (planning; each pull of its next batch) first takes a turn from the
//! [`FairGate`]: at most `slots` turns are out at once (one per query thread), and a
//! tenant holds at most its fair share of them (`slots` divided among the tenants that
//! hold or wait for turns, at least one), so a tenant with one query gets a thread while
//! another keeps two busy. Waiting tenants are served in the order they asked.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;

use parking_lot::Mutex;
use tokio::sync::oneshot;

pub struct FairGate {
    slots: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    out: usize,
    held: HashMap<String, usize>,
    waiting: VecDeque<(String, oneshot::Sender<()>)>,
}

impl State {
    fn tenants(&self) -> usize {
        let mut n = self.held.len();
        for (t, _) in &self.waiting {
            if !self.held.contains_key(t) {
                n += 1;
            }
        }
        n.max(1)
    }

    fn may_take(&self, tenant: &str, slots: usize) -> bool {
        let share = slots.div_ceil(self.tenants()).max(1);
        self.out < slots && self.held.get(tenant).copied().unwrap_or(0) < share
    }

    fn take(&mut self, tenant: &str) {
        self.out += 1;
        *self.held.entry(tenant.to_owned()).or_default() += 1;
    }
}

/// A turn on the query threads, given back on drop.
pub struct Turn {
    gate: Arc<FairGate>,
    tenant: String,
}

impl FairGate {
    pub fn new(slots: usize) -> Arc<FairGate> {
        Arc::new(FairGate {
            slots: slots.max(1),
            state: Mutex::default(),
        })
    }

    /// Wait for `tenant`'s next turn.
    pub async fn turn(self: &Arc<Self>, tenant: &str) -> Turn {
        self.clone().turn_owned(tenant.to_owned()).await
    }

    async fn turn_owned(self: Arc<Self>, tenant: String) -> Turn {
        let tenant = tenant.as_str();
        let rx = {
            let mut s = self.state.lock();
            let first_in_line = !s.waiting.iter().any(|(t, _)| t == tenant);
            if first_in_line && s.may_take(tenant, self.slots) {
                s.take(tenant);
                None
            } else {
                let (tx, rx) = oneshot::channel();
                s.waiting.push_back((tenant.to_owned(), tx));
                Some(rx)
            }
        };
        if let Some(rx) = rx {
            // The turn is ours once sent; a gate dropped meanwhile cannot happen (we
            // hold an Arc), so an error only means a bug: go on without waiting.
            let _ = rx.await;
        }
        Turn {
            gate: self.clone(),
            tenant: tenant.to_owned(),
        }
    }

    /// `stream` polled one turn at a time: each poll of it (a bounded step, since
    /// DataFusion's operators yield cooperatively) takes a turn and gives it back.
    pub fn gate<S: Stream + Unpin>(self: &Arc<Self>, tenant: &str, stream: S) -> Gated<S> {
        Gated {
            gate: self.clone(),
            tenant: tenant.to_owned(),
            inner: stream,
            waiting: None,
        }
    }

    fn give_back(&self, tenant: &str) {
        let mut s = self.state.lock();
        s.out -= 1;
        if let Some(n) = s.held.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                s.held.remove(tenant);
            }
        }
        // Hand turns to waiters in order, skipping tenants at their share.
        let mut i = 0;
        while i < s.waiting.len() && s.out < self.slots {
            let t = s.waiting[i].0.clone();
            if s.may_take(&t, self.slots) {
                let (t, tx) = s.waiting.remove(i).expect("index checked");
                s.take(&t);
                if tx.send(()).is_err() {
                    // The waiter gave up (its query was dropped): return the turn.
                    s.out -= 1;
                    if let Some(n) = s.held.get_mut(&t) {
                        *n -= 1;
                        if *n == 0 {
                            s.held.remove(&t);
                        }
                    }
                }
            } else {
                i += 1;
            }
        }
    }
}

type TurnFuture = Pin<Box<dyn Future<Output = Turn> + Send>>;

/// A stream whose every poll is a turn (see [`FairGate::gate`]).
pub struct Gated<S> {
    gate: Arc<FairGate>,
    tenant: String,
    inner: S,
    waiting: Option<TurnFuture>,
}

impl<S: Stream + Unpin> Stream for Gated<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        let waiting = this
            .waiting
            .get_or_insert_with(|| Box::pin(this.gate.clone().turn_owned(this.tenant.clone())));
        let Poll::Ready(turn) = waiting.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        this.waiting = None;
        let r = Pin::new(&mut this.inner).poll_next(cx);
        drop(turn);
        r
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.gate.give_back(&self.tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_busy_tenant_leaves_a_turn_for_another() {
        let g = FairGate::new(2);
        let a1 = g.turn("a").await;
        let a2 = g.turn("a").await; // alone, a may use both
        let g2 = g.clone();
        let b = tokio::spawn(async move { g2.turn("b").await });
        let g3 = g.clone();
        let a3 = tokio::spawn(async move { g3.turn("a").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!b.is_finished() && !a3.is_finished());
        drop(a1);
        // b gets the freed turn although a asked again: a holds its share (1 of 2).
        let b = tokio::time::timeout(Duration::from_secs(1), b)
            .await
            .unwrap()
            .unwrap();
        assert!(!a3.is_finished());
        drop(a2);
        let a3 = tokio::time::timeout(Duration::from_secs(1), a3)
            .await
            .unwrap()
            .unwrap();
        drop((b, a3));
        assert_eq!(g.state.lock().out, 0);
    }
}
