//! A cluster's pending-request queue of one routing priority (Envoy's
//! `max_pending_requests`, per priority as each has its pools): a
//! request whose codec found no idle connection while the cluster is at
//! `max_connections` waits here, first come first served, until a
//! connection slot frees (a connection closes, or a finished exchange
//! gives its connection up because someone waits) or its route timeout
//! drops it; past `max_pending_requests` waiting requests it overflows at
//! once. Nothing here runs while no connection limit is reached: the
//! releasing side reads one atomic.

use crate::config::circuit_breakers::RoutingPriority;
use crate::metrics::names;
use metrics::{Counter, Gauge, SharedString};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::Notify;

/// The waiters of one cluster at one routing priority.
pub struct Pending {
    max: u32,
    /// The `priority` label of the overflow counter.
    priority: RoutingPriority,
    /// Requests waiting now (also read by releasers: `wanted`).
    waiting: AtomicU32,
    /// Wakes one waiter per freed slot (FIFO: tokio's `notify_one`).
    notify: Notify,
    /// The `cluster` label.
    cluster: SharedString,
    /// Registered when a request first waits or overflows (most clusters
    /// never queue one: `crate::metrics::rare`).
    series: OnceLock<Series>,
}

/// The queue's series.
struct Series {
    active: Gauge,
    total: Counter,
    overflow: Counter,
    cancelled: Counter,
}

impl Pending {
    pub fn new(cluster: &SharedString, priority: RoutingPriority, max: u32) -> Self {
        Self {
            max,
            priority,
            waiting: AtomicU32::new(0),
            notify: Notify::new(),
            cluster: cluster.clone(),
            series: OnceLock::new(),
        }
    }

    fn series(&self) -> &Series {
        crate::metrics::rare(&self.series, || {
            let c = &self.cluster;
            Series {
                active: metrics::gauge!(names::CLUSTER_UPSTREAM_RQ_PENDING_ACTIVE, "cluster" => c.clone()),
                total: metrics::counter!(names::CLUSTER_UPSTREAM_RQ_PENDING_TOTAL, "cluster" => c.clone()),
                // Per priority, as the requests' breakers (the other
                // series sum both priorities' queues, as Envoy's do).
                overflow: metrics::counter!(
                    names::CLUSTER_UPSTREAM_RQ_PENDING_OVERFLOW_TOTAL,
                    "cluster" => c.clone(),
                    "priority" => self.priority.label()
                ),
                cancelled: metrics::counter!(names::CLUSTER_UPSTREAM_RQ_PENDING_CANCELLED_TOTAL, "cluster" => c.clone()),
            }
        })
    }

    /// Whether a request waits for a connection slot.
    pub fn wanted(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// A connection slot freed: the first waiter tries again.
    pub fn wake(&self) {
        if self.wanted() {
            self.notify.notify_one();
        }
    }

    /// Waits until `take` succeeds; `None` at once (counted) when
    /// `max_pending_requests` requests wait already. Dropping the future
    /// (the route timeout) leaves the queue, counted as cancelled.
    pub async fn wait_for<T>(&self, take: impl FnMut() -> Option<T>) -> Option<T> {
        self.wait_with(None, take).await
    }

    /// `wait_for`, also woken by `local` (a multiplexed pool's freed
    /// streams, `pool::MuxPool`): a waiter there wants either a stream
    /// slot on its endpoint's connections or a connection slot.
    pub async fn wait_with<T>(
        &self,
        local: Option<&Notify>,
        mut take: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.series().overflow.increment(1);
            // A slot freed meanwhile may have woken nobody but us.
            self.wake();
            return None;
        }
        let series = self.series();
        series.total.increment(1);
        series.active.increment(1.0);
        let mut waiter = Waiter {
            pending: self,
            served: false,
        };
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check: a slot freed after it wakes us.
            notified.as_mut().enable();
            let local = local.map(Notify::notified);
            tokio::pin!(local);
            if let Some(n) = local.as_mut().as_pin_mut() {
                n.enable();
            }
            if let Some(t) = take() {
                waiter.served = true;
                return Some(t);
            }
            let freed = async {
                match local.as_mut().as_pin_mut() {
                    Some(n) => n.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = freed => {}
            }
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// One waiting request's place, given back when it is served or dropped.
struct Waiter<'a> {
    pending: &'a Pending,
    served: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let p = self.pending;
        p.waiting.fetch_sub(1, Ordering::SeqCst);
        let series = p.series();
        series.active.decrement(1.0);
        if !self.served {
            series.cancelled.increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[tokio::test]
    async fn waits_in_order_overflows_past_max_and_leaves_when_dropped() {
        let p = Arc::new(Pending::new(&"pq".into(), RoutingPriority::Default, 2));
        let free = Arc::new(AtomicBool::new(false));
        let take = |f: Arc<AtomicBool>| move || f.swap(false, Ordering::SeqCst).then_some(());
        let (p1, f1) = (p.clone(), free.clone());
        let a = tokio::spawn(async move { p1.wait_for(take(f1)).await });
        let (p2, f2) = (p.clone(), free.clone());
        let b = tokio::spawn(async move { p2.wait_for(take(f2)).await });
        while p.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        assert!(p.wait_for(|| None::<()>).await.is_none(), "third overflows");
        free.store(true, Ordering::SeqCst);
        p.wake();
        // One slot serves exactly one waiter.
        let first = tokio::select! { r = a => r, r = b => r };
        assert_eq!(first.ok().flatten(), Some(()));
        assert_eq!(p.waiting(), 1);
        // A dropped waiter leaves the queue.
        let (p3, f3) = (p.clone(), free.clone());
        let c = tokio::spawn(async move { p3.wait_for(take(f3)).await });
        while p.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        c.abort();
        let _ = c.await;
        assert_eq!(p.waiting(), 1);
    }
}
