//! The queue's conformance suite, against the real Redis (`BERTH_TEST_REDIS_URL`, default
//! the local server). Each test uses a partition of its own and removes it afterwards.

use std::time::Duration;

use berth_core::{NodeView, Resources, SchedulingSpec};
use berth_queue::{Queue, ReserveOutcome};
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

struct TestQueue(Queue, String);

impl TestQueue {
    async fn new() -> TestQueue {
        let partition = format!("test-{}", Uuid::new_v4().simple());
        let q = Queue::connect(&redis_url(), &partition)
            .await
            .expect("Redis must be running on BERTH_TEST_REDIS_URL (run `make services`)");
        q.ping().await.expect("Redis must answer PING (run `make services`)");
        TestQueue(q, partition)
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        // Best effort, and also after a failed assertion.
        Queue::purge_blocking(&redis_url(), &self.1);
    }
}

fn spec(tenant: &str, priority: u8, cpu: u64) -> SchedulingSpec {
    SchedulingSpec {
        task_id: Uuid::new_v4(),
        tenant: tenant.into(),
        requests: Resources::new(cpu, 1 << 20, 0),
        priority,
        node_selector: Default::default(),
        tolerations: vec![],
        attempt: 0,
        seq: 0,
    }
}

fn node(name: &str, cpu: u64, gpu: u64) -> NodeView {
    NodeView {
        name: name.into(),
        allocatable: Resources::new(cpu, 64 << 30, gpu),
        requested: Resources::ZERO,
        labels: Default::default(),
        taints: vec![],
        schedulable: true,
    }
}

const LEASE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn enqueue_is_idempotent_on_task_id() {
    let t = TestQueue::new().await;
    let s = spec("a", 0, 100);
    assert!(t.0.enqueue(&s, Duration::ZERO).await.unwrap().is_some());
    assert_eq!(t.0.enqueue(&s, Duration::ZERO).await.unwrap(), None);
    let claimed = t.0.claim("s1", 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
}

#[tokio::test]
async fn claim_orders_by_priority_then_submission_across_tenants() {
    let t = TestQueue::new().await;
    let low_a = spec("a", 10, 100);
    let high_b = spec("b", 90, 100);
    let low_b = spec("b", 10, 100);
    let mid_a = spec("a", 50, 100);
    for s in [&low_a, &high_b, &low_b, &mid_a] {
        t.0.enqueue(s, Duration::ZERO).await.unwrap();
    }
    let ids: Vec<Uuid> = t.0.claim("s1", 10, LEASE).await.unwrap().into_iter().map(|c| c.spec.task_id).collect();
    assert_eq!(ids, vec![high_b.task_id, mid_a.task_id, low_a.task_id, low_b.task_id]);
}

#[tokio::test]
async fn claimed_tasks_are_invisible_until_their_lease_expires() {
    let t = TestQueue::new().await;
    let s = spec("a", 0, 100);
    t.0.enqueue(&s, Duration::ZERO).await.unwrap();
    let first = t.0.claim("s1", 10, Duration::from_millis(200)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(t.0.claim("s2", 10, LEASE).await.unwrap().is_empty(), "leased task claimed twice");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = t.0.claim("s2", 10, LEASE).await.unwrap();
    assert_eq!(again.len(), 1, "an expired lease returns the task to ready");
    // The first owner's lease is gone: its reservation attempt is refused.
    t.0.upsert_node(&node("n1", 1000, 0)).await.unwrap();
    assert_eq!(t.0.reserve(&s, "s1", "n1").await.unwrap(), ReserveOutcome::LeaseLost);
    assert_eq!(t.0.reserve(&s, "s2", "n1").await.unwrap(), ReserveOutcome::Bound);
}

#[tokio::test]
async fn reserve_refuses_when_the_node_is_full_and_reports_its_state() {
    let t = TestQueue::new().await;
    t.0.upsert_node(&node("n1", 1000, 0)).await.unwrap();
    let a = spec("a", 0, 700);
    let b = spec("a", 0, 400);
    t.0.enqueue(&a, Duration::ZERO).await.unwrap();
    t.0.enqueue(&b, Duration::ZERO).await.unwrap();
    assert_eq!(t.0.claim("s", 10, LEASE).await.unwrap().len(), 2);
    assert_eq!(t.0.reserve(&a, "s", "n1").await.unwrap(), ReserveOutcome::Bound);
    match t.0.reserve(&b, "s", "n1").await.unwrap() {
        ReserveOutcome::NoRoom { allocatable, reserved } => {
            assert_eq!(allocatable.cpu_millis, 1000);
            assert_eq!(reserved.cpu_millis, 700);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.0.reserve(&b, "s", "nope").await.unwrap(), ReserveOutcome::NodeUnavailable);
    let snap = t.0.snapshot().await.unwrap();
    assert_eq!(snap.nodes[0].requested.cpu_millis, 700);
    assert_eq!(t.0.tenant_usage("a").await.unwrap().cpu_millis, 700);
}

#[tokio::test]
async fn a_cordoned_node_takes_no_reservation() {
    let t = TestQueue::new().await;
    let mut n = node("n1", 1000, 0);
    n.schedulable = false;
    t.0.upsert_node(&n).await.unwrap();
    let s = spec("a", 0, 100);
    t.0.enqueue(&s, Duration::ZERO).await.unwrap();
    t.0.claim("s", 1, LEASE).await.unwrap();
    assert_eq!(t.0.reserve(&s, "s", "n1").await.unwrap(), ReserveOutcome::NodeUnavailable);
}

#[tokio::test]
async fn finishing_returns_reservation_and_usage_to_zero_and_is_idempotent() {
    let t = TestQueue::new().await;
    t.0.upsert_node(&node("n1", 4000, 2)).await.unwrap();
    let mut s = spec("a", 0, 1500);
    s.requests.gpu = 0; // zero amounts exercise the "-0" path of HINCRBY
    t.0.enqueue(&s, Duration::ZERO).await.unwrap();
    t.0.claim("s", 1, LEASE).await.unwrap();
    assert_eq!(t.0.reserve(&s, "s", "n1").await.unwrap(), ReserveOutcome::Bound);
    let v1 = t.0.nodes_version().await.unwrap();
    assert!(t.0.finish(s.task_id).await.unwrap());
    assert!(!t.0.finish(s.task_id).await.unwrap(), "a second finish changes nothing");
    assert!(t.0.nodes_version().await.unwrap() > v1);
    let snap = t.0.snapshot().await.unwrap();
    assert_eq!(snap.nodes[0].requested, Resources::ZERO);
    assert_eq!(t.0.tenant_usage("a").await.unwrap(), Resources::ZERO);
    assert_eq!(t.0.task_state(s.task_id).await.unwrap(), None);
}

#[tokio::test]
async fn requestless_tasks_reserve_kube_scheduler_defaults() {
    let t = TestQueue::new().await;
    t.0.upsert_node(&node("n1", 4000, 0)).await.unwrap();
    let mut s = spec("a", 0, 0);
    s.requests = Resources::ZERO;
    t.0.enqueue(&s, Duration::ZERO).await.unwrap();
    t.0.claim("s", 1, LEASE).await.unwrap();
    t.0.reserve(&s, "s", "n1").await.unwrap();
    let snap = t.0.snapshot().await.unwrap();
    assert_eq!(snap.nodes[0].requested, Resources::new(100, 200 << 20, 0));
}

#[tokio::test]
async fn retry_releases_and_requeues_the_next_attempt_once() {
    let t = TestQueue::new().await;
    t.0.upsert_node(&node("n1", 4000, 0)).await.unwrap();
    let s = spec("a", 0, 1000);
    t.0.enqueue(&s, Duration::ZERO).await.unwrap();
    t.0.claim("s", 1, LEASE).await.unwrap();
    t.0.reserve(&s, "s", "n1").await.unwrap();
    assert!(t.0.retry(s.task_id, 0, Duration::from_millis(150)).await.unwrap());
    assert!(!t.0.retry(s.task_id, 0, Duration::from_millis(150)).await.unwrap(), "the same failure twice retries once");
    assert_eq!(t.0.snapshot().await.unwrap().nodes[0].requested, Resources::ZERO);
    assert!(t.0.claim("s", 1, LEASE).await.unwrap().is_empty(), "the retry waits for its backoff");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let c = t.0.claim("s", 1, LEASE).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].spec.attempt, 1);
    assert_eq!(c[0].spec.seq, 1, "a retry keeps its place in submission order");
}

#[tokio::test]
async fn unlease_records_the_reason_and_delays_the_task() {
    let t = TestQueue::new().await;
    let s = spec("a", 0, 1000);
    t.0.enqueue(&s, Duration::ZERO).await.unwrap();
    t.0.claim("s", 1, LEASE).await.unwrap();
    assert!(!t.0.unlease(s.task_id, "other", Duration::ZERO, "").await.unwrap(), "only the owner may unlease");
    assert!(
        t.0.unlease(s.task_id, "s", Duration::from_millis(150), "0/1 nodes fit: 1 insufficient cpu").await.unwrap()
    );
    let st = t.0.task_state(s.task_id).await.unwrap().unwrap();
    assert_eq!(st.state, "delayed");
    assert_eq!(st.reason.as_deref(), Some("0/1 nodes fit: 1 insufficient cpu"));
    assert!(t.0.claim("s", 1, LEASE).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(t.0.claim("s", 1, LEASE).await.unwrap().len(), 1);
}

#[tokio::test]
async fn bindings_are_delivered_acknowledged_and_reclaimed_from_dead_consumers() {
    let t = TestQueue::new().await;
    t.0.upsert_node(&node("n1", 4000, 0)).await.unwrap();
    t.0.ensure_binding_group().await.unwrap();
    t.0.ensure_binding_group().await.unwrap(); // idempotent
    let (a, b) = (spec("a", 0, 100), spec("a", 0, 100));
    for s in [&a, &b] {
        t.0.enqueue(s, Duration::ZERO).await.unwrap();
    }
    t.0.claim("s", 2, LEASE).await.unwrap();
    for s in [&a, &b] {
        assert_eq!(t.0.reserve(s, "s", "n1").await.unwrap(), ReserveOutcome::Bound);
    }
    let reader = t.0.dedicated(Duration::from_millis(100)).await.unwrap();
    let got = reader.read_bindings("dead", 10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].node, "n1");
    assert_eq!(got[0].attempt, 0);
    // "dead" acknowledges one and dies; the other is taken over after it idles.
    t.0.ack_binding(&got[0].entry_id).await.unwrap();
    assert!(reader.read_bindings("live", 10, Duration::from_millis(50)).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(60)).await;
    let (taken, _) = t.0.reclaim_bindings("live", Duration::from_millis(50), 10, "0-0").await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].task_id, got[1].task_id);
}

#[tokio::test]
async fn upserting_an_unchanged_node_does_not_move_the_version_and_keeps_reservations() {
    let t = TestQueue::new().await;
    let n = node("n1", 4000, 0);
    assert!(t.0.upsert_node(&n).await.unwrap());
    let v = t.0.nodes_version().await.unwrap();
    assert!(!t.0.upsert_node(&n).await.unwrap());
    assert_eq!(t.0.nodes_version().await.unwrap(), v);
    let s = spec("a", 0, 1000);
    t.0.enqueue(&s, Duration::ZERO).await.unwrap();
    t.0.claim("s", 1, LEASE).await.unwrap();
    t.0.reserve(&s, "s", "n1").await.unwrap();
    let mut bigger = n.clone();
    bigger.allocatable.cpu_millis = 8000;
    assert!(t.0.upsert_node(&bigger).await.unwrap());
    let snap = t.0.snapshot().await.unwrap();
    assert_eq!(snap.nodes[0].allocatable.cpu_millis, 8000);
    assert_eq!(snap.nodes[0].requested.cpu_millis, 1000);
}

#[tokio::test]
async fn a_ready_entry_whose_task_hash_vanished_is_dropped_not_leased() {
    let t = TestQueue::new().await;
    let (gone, kept) = (spec("a", 0, 100), spec("a", 0, 100));
    t.0.enqueue(&gone, Duration::ZERO).await.unwrap();
    t.0.enqueue(&kept, Duration::ZERO).await.unwrap();
    let _: () = redis::cmd("DEL").arg(t.0.keys().task(gone.task_id)).query_async(&mut t.0.connection()).await.unwrap();
    let c = t.0.claim("s", 10, LEASE).await.unwrap();
    assert_eq!(c.iter().map(|c| c.spec.task_id).collect::<Vec<_>>(), vec![kept.task_id]);
    assert_eq!(t.0.task_state(gone.task_id).await.unwrap(), None, "no partial hash is left to block a re-enqueue");
    assert!(t.0.enqueue(&gone, Duration::ZERO).await.unwrap().is_some());
}

#[tokio::test]
async fn a_task_handed_back_without_a_reason_loses_its_old_one() {
    let t = TestQueue::new().await;
    let s = spec("a", 0, 100);
    t.0.enqueue(&s, Duration::ZERO).await.unwrap();
    t.0.claim("s", 1, LEASE).await.unwrap();
    t.0.unlease(s.task_id, "s", Duration::from_millis(1), "0/1 nodes fit").await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    t.0.claim("s", 1, LEASE).await.unwrap();
    t.0.unlease(s.task_id, "s", Duration::ZERO, "").await.unwrap();
    assert_eq!(t.0.task_state(s.task_id).await.unwrap().unwrap().reason, None);
}

#[tokio::test]
async fn a_suspended_tenants_tasks_stay_queued_until_it_is_reactivated() {
    let t = TestQueue::new().await;
    let (a, b) = (spec("a", 100, 100), spec("b", 0, 100));
    t.0.enqueue(&a, Duration::ZERO).await.unwrap();
    t.0.enqueue(&b, Duration::ZERO).await.unwrap();
    t.0.set_suspended("a", true).await.unwrap();
    let c = t.0.claim("s", 10, LEASE).await.unwrap();
    assert_eq!(c.iter().map(|c| c.spec.task_id).collect::<Vec<_>>(), vec![b.task_id]);
    assert!(t.0.claim("s", 10, LEASE).await.unwrap().is_empty());
    assert_eq!(t.0.task_state(a.task_id).await.unwrap().unwrap().state, "ready");
    t.0.replace_suspended(&[]).await.unwrap();
    assert_eq!(t.0.claim("s", 10, LEASE).await.unwrap()[0].spec.task_id, a.task_id);
}

#[tokio::test]
async fn the_leader_lease_has_one_holder() {
    let t = TestQueue::new().await;
    assert!(t.0.hold_leader("r", "a", Duration::from_millis(200)).await.unwrap());
    assert!(!t.0.hold_leader("r", "b", Duration::from_millis(200)).await.unwrap());
    assert!(t.0.hold_leader("r", "a", Duration::from_millis(200)).await.unwrap(), "the holder renews");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(t.0.hold_leader("r", "b", Duration::from_millis(200)).await.unwrap(), "an expired lease passes on");
}

fn sized(tenant: &str, cpu: u64, mem: u64) -> SchedulingSpec {
    let mut s = spec(tenant, 0, cpu);
    s.requests.memory_bytes = mem;
    s
}

/// The cluster's capacity follows every node's allocatable while it is schedulable.
#[tokio::test]
async fn capacity_is_the_sum_of_schedulable_nodes() {
    let t = TestQueue::new().await;
    t.0.upsert_node(&node("a", 4000, 1)).await.unwrap();
    t.0.upsert_node(&node("b", 8000, 0)).await.unwrap();
    assert_eq!(t.0.capacity().await.unwrap(), Resources::new(12_000, 128 << 30, 1));
    t.0.upsert_node(&node("b", 6000, 0)).await.unwrap();
    assert_eq!(t.0.capacity().await.unwrap().cpu_millis, 10_000);
    let mut cordoned = node("a", 4000, 1);
    cordoned.schedulable = false;
    t.0.upsert_node(&cordoned).await.unwrap();
    assert_eq!(t.0.capacity().await.unwrap(), Resources::new(6000, 64 << 30, 0));
    // Publishing the same facts again changes nothing.
    t.0.upsert_node(&cordoned).await.unwrap();
    assert_eq!(t.0.capacity().await.unwrap(), Resources::new(6000, 64 << 30, 0));
}

/// The DRF paper's example (Ghodsi et al., 2011): 9 CPU and 18 GiB; A's tasks take 1 CPU and
/// 4 GiB (memory-dominant), B's 3 CPU and 1 GiB (CPU-dominant). Progressive filling claims
/// A, B, A, B, A: then both hold a dominant share of 2/3 and the CPU is gone.
#[tokio::test]
async fn fair_share_claims_in_progressive_filling_order() {
    let t = TestQueue::new().await;
    let mut n = node("n", 9000, 0);
    n.allocatable.memory_bytes = 18 << 30;
    t.0.upsert_node(&n).await.unwrap();
    // A's tasks are all submitted first: FIFO would claim A's four before any of B's.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..6 {
        let s = sized("a", 1000, 4 << 30);
        t.0.enqueue(&s, Duration::ZERO).await.unwrap();
        a.push(s.task_id);
    }
    for _ in 0..6 {
        let s = sized("b", 3000, 1 << 30);
        t.0.enqueue(&s, Duration::ZERO).await.unwrap();
        b.push(s.task_id);
    }
    let fifo = t.0.claim_ordered("s", 5, LEASE, berth_core::config::ClaimOrder::Priority).await.unwrap();
    assert!(fifo.iter().all(|c| c.spec.tenant == "a"), "priority order is global FIFO");
    // Give the leases back and claim again with fair share.
    for id in &a[..5] {
        t.0.unlease(*id, "s", Duration::ZERO, "").await.unwrap();
    }
    let claimed = t.0.claim_ordered("s", 5, LEASE, berth_core::config::ClaimOrder::Drf).await.unwrap();
    let tenants: Vec<String> = claimed.iter().map(|c| c.spec.tenant.clone()).collect();
    assert_eq!(tenants, ["a", "b", "a", "b", "a"]);
    // Reserved, the claims become usage: both tenants now hold a dominant share of 2/3.
    for c in &claimed {
        assert_eq!(t.0.reserve(&c.spec, "s", "n").await.unwrap(), ReserveOutcome::Bound);
    }
    // Weight 2 halves A's share (2/3 → 1/3): A is next, and stays ahead until it doubles B.
    t.0.set_weight("a", 2).await.unwrap();
    let next = t.0.claim_ordered("s", 3, LEASE, berth_core::config::ClaimOrder::Drf).await.unwrap();
    let tenants: Vec<String> = next.iter().map(|c| c.spec.tenant.clone()).collect();
    // a: 12/18 → /2 = 1/3; b: 6/9 = 2/3. a+1 → 16/18/2 = 0.44 < 2/3; a+2 → 20/18 → 0.55 < 2/3.
    assert_eq!(tenants, ["a", "a", "a"]);
}

/// Priority first across tenants, fair share between equal priorities.
#[tokio::test]
async fn priority_then_fair_share_lets_priority_win_across_tenants() {
    let t = TestQueue::new().await;
    t.0.upsert_node(&node("n", 10_000, 0)).await.unwrap();
    let busy = spec("busy", 0, 5000);
    t.0.enqueue(&busy, Duration::ZERO).await.unwrap();
    let c = t.0.claim("s", 1, LEASE).await.unwrap();
    assert_eq!(t.0.reserve(&c[0].spec, "s", "n").await.unwrap(), ReserveOutcome::Bound);
    // busy holds half the cluster; idle holds nothing.
    let urgent = spec("busy", 90, 100);
    let (idle_low, busy_low) = (spec("idle", 10, 100), spec("busy", 10, 100));
    for s in [&busy_low, &idle_low, &urgent] {
        t.0.enqueue(s, Duration::ZERO).await.unwrap();
    }
    let order = |v: Vec<berth_queue::ClaimedTask>| v.into_iter().map(|c| c.spec.task_id).collect::<Vec<_>>();
    let got = order(t.0.claim_ordered("s", 3, LEASE, berth_core::config::ClaimOrder::PriorityThenDrf).await.unwrap());
    assert_eq!(got, [urgent.task_id, idle_low.task_id, busy_low.task_id]);
    for id in &got {
        t.0.unlease(*id, "s", Duration::ZERO, "").await.unwrap();
    }
    // Fair share first: the idle tenant goes before even the urgent task of the busy one.
    let got = order(t.0.claim_ordered("s", 3, LEASE, berth_core::config::ClaimOrder::Drf).await.unwrap());
    assert_eq!(got[0], idle_low.task_id);
    assert_eq!(&got[1..], [urgent.task_id, busy_low.task_id], "priority within a tenant");
}

/// A task no node fits is parked: it is not claimed again while nothing changes, however
/// often schedulers claim; a node change or a release brings it back at once; after its max
/// wait it comes back regardless; and a finished task leaves the parked set.
#[tokio::test]
async fn a_parked_task_waits_for_a_capacity_change_not_a_timer() {
    use berth_queue::ParkOutcome;
    let t = TestQueue::new().await;
    t.0.upsert_node(&node("n", 1000, 0)).await.unwrap();
    let big = spec("a", 0, 4000);
    t.0.enqueue(&big, Duration::ZERO).await.unwrap();
    // Claim, judge (at the epoch read before the claim, as a scheduler does), park.
    let park = |max: Duration| {
        let q = t.0.clone();
        async move {
            let epoch = q.capacity_epoch().await.unwrap();
            let c = q.claim("s", 10, LEASE).await.unwrap();
            assert_eq!(c.len(), 1, "claimable");
            let out = q.park(c[0].spec.task_id, "s", "0/1 nodes fit: 1 insufficient cpu", max, epoch).await.unwrap();
            assert_eq!(out, ParkOutcome::Parked);
        }
    };
    park(Duration::from_secs(60)).await;
    assert_eq!(t.0.task_state(big.task_id).await.unwrap().unwrap().state, "parked");
    for _ in 0..5 {
        assert!(t.0.claim("s", 10, LEASE).await.unwrap().is_empty(), "no change, no new look");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Capacity changes (a node is added): claimable again at once.
    t.0.upsert_node(&node("m", 8000, 0)).await.unwrap();
    park(Duration::from_secs(60)).await;
    // A release of another task's reservation is a change too.
    let small = spec("b", 0, 100);
    t.0.enqueue(&small, Duration::ZERO).await.unwrap();
    let c = t.0.claim("s", 10, LEASE).await.unwrap();
    assert_eq!(c.len(), 1, "only the small task is claimable");
    assert_eq!(t.0.reserve(&c[0].spec, "s", "m").await.unwrap(), ReserveOutcome::Bound);
    t.0.finish(small.task_id).await.unwrap();
    park(Duration::from_millis(300)).await;
    // With nothing changing, the max wait (300 ms) brings it back anyway.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(t.0.claim("s", 10, LEASE).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let c = t.0.claim("s", 10, LEASE).await.unwrap();
    assert_eq!(c.len(), 1, "the max wait ended");
    // Capacity that frees while the task is being judged is not missed: the epoch moved past
    // the judgement, so parking puts it straight back in the ready queue.
    let judged = t.0.capacity_epoch().await.unwrap();
    t.0.upsert_node(&node("late", 8000, 0)).await.unwrap();
    let out = t.0.park(big.task_id, "s", "judged before the node came", Duration::from_secs(60), judged).await.unwrap();
    assert_eq!(out, ParkOutcome::Requeued);
    assert_eq!(t.0.task_state(big.task_id).await.unwrap().unwrap().state, "ready");
    // A finished (cancelled) parked task is never claimed again.
    park(Duration::from_secs(60)).await;
    t.0.finish(big.task_id).await.unwrap();
    t.0.upsert_node(&node("z", 8000, 0)).await.unwrap();
    assert!(t.0.claim("s", 10, LEASE).await.unwrap().is_empty(), "a finished task is never claimed");
}

/// However many tasks are parked, each is judged at most once per capacity change: re-parked
/// at the new epoch, they wait for the next one.
#[tokio::test]
async fn parked_tasks_are_judged_once_per_capacity_change() {
    let t = TestQueue::new().await;
    t.0.upsert_node(&node("n", 1000, 0)).await.unwrap();
    for _ in 0..30 {
        t.0.enqueue(&spec("a", 0, 4000), Duration::ZERO).await.unwrap();
    }
    let judge_all = || {
        let q = t.0.clone();
        async move {
            let epoch = q.capacity_epoch().await.unwrap();
            let mut judged = 0;
            loop {
                let c = q.claim("s", 8, LEASE).await.unwrap();
                if c.is_empty() {
                    return judged;
                }
                for task in c {
                    q.park(task.spec.task_id, "s", "no room", Duration::from_secs(60), epoch).await.unwrap();
                    judged += 1;
                }
            }
        }
    };
    assert_eq!(judge_all().await, 30);
    assert_eq!(judge_all().await, 0, "nothing changed");
    t.0.upsert_node(&node("m", 2000, 0)).await.unwrap();
    assert_eq!(judge_all().await, 30, "one change: each judged once more");
    assert_eq!(judge_all().await, 0);
}

/// A refreshed snapshot equals a fresh one, having read only the nodes that changed.
#[tokio::test]
async fn a_refreshed_snapshot_equals_a_fresh_one() {
    let t = TestQueue::new().await;
    for n in ["b", "d", "f"] {
        t.0.upsert_node(&node(n, 4000, 0)).await.unwrap();
    }
    let mut snap = t.0.snapshot().await.unwrap();
    let s = spec("a", 0, 1500);
    t.0.enqueue(&s, Duration::ZERO).await.unwrap();
    let c = t.0.claim("s", 1, LEASE).await.unwrap();
    assert_eq!(t.0.reserve(&c[0].spec, "s", "d").await.unwrap(), ReserveOutcome::Bound);
    t.0.upsert_node(&node("a", 2000, 1)).await.unwrap();
    t.0.upsert_node(&node("e", 2000, 1)).await.unwrap();
    t.0.refresh_snapshot(&mut snap).await.unwrap();
    assert_eq!(snap, t.0.snapshot().await.unwrap());
    assert_eq!(snap.node("d").unwrap().requested.cpu_millis, 1500);
    assert_eq!(snap.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["a", "b", "d", "e", "f"]);
    // Released: the node is read again.
    t.0.finish(s.task_id).await.unwrap();
    t.0.refresh_snapshot(&mut snap).await.unwrap();
    assert_eq!(snap, t.0.snapshot().await.unwrap());
    // Nothing changed: nothing to read, the same snapshot.
    let before = snap.clone();
    t.0.refresh_snapshot(&mut snap).await.unwrap();
    assert_eq!(snap, before);
}

const AMD: &str = "amd.com/gpu";

fn with_amd(mut n: NodeView, amount: u64) -> NodeView {
    n.allocatable.extended.set(AMD, amount);
    n
}

/// Extended resources by name go through the same ledger as cpu: reserved atomically, never
/// over-committed, counted in the tenant's usage and the cluster's capacity, released.
#[tokio::test]
async fn extended_resources_are_reserved_counted_and_released() {
    let t = TestQueue::new().await;
    t.0.upsert_node(&with_amd(node("amd", 8000, 0), 2)).await.unwrap();
    t.0.upsert_node(&node("plain", 8000, 0)).await.unwrap();
    assert_eq!(t.0.capacity().await.unwrap().amount(AMD), 2);
    let snap = t.0.snapshot().await.unwrap();
    assert_eq!(snap.node("amd").unwrap().allocatable.amount(AMD), 2);
    assert_eq!(snap.node("plain").unwrap().allocatable.extended.len(), 0);

    let asks: Vec<SchedulingSpec> = (0..3)
        .map(|_| {
            let mut s = spec("a", 0, 100);
            s.requests.extended.set(AMD, 1);
            s
        })
        .collect();
    for s in &asks {
        t.0.enqueue(s, Duration::ZERO).await.unwrap();
    }
    let claimed = t.0.claim("s", 3, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert_eq!(claimed[0].spec.requests.amount(AMD), 1, "the spec keeps its extended request");
    // A node offering none refuses outright, however much cpu it has.
    assert!(matches!(t.0.reserve(&asks[0], "s", "plain").await.unwrap(), ReserveOutcome::NoRoom { .. }));
    assert_eq!(t.0.reserve(&asks[0], "s", "amd").await.unwrap(), ReserveOutcome::Bound);
    assert_eq!(t.0.reserve(&asks[1], "s", "amd").await.unwrap(), ReserveOutcome::Bound);
    match t.0.reserve(&asks[2], "s", "amd").await.unwrap() {
        ReserveOutcome::NoRoom { allocatable, reserved } => {
            assert_eq!((allocatable.amount(AMD), reserved.amount(AMD)), (2, 2));
            assert_eq!(reserved.cpu_millis, 200, "the fresh state is the whole node");
        }
        other => panic!("a third amd.com/gpu on a node of two: {other:?}"),
    }
    assert_eq!(t.0.tenant_usage("a").await.unwrap().amount(AMD), 2);
    assert_eq!(t.0.snapshot().await.unwrap().node("amd").unwrap().requested.amount(AMD), 2);

    assert!(t.0.finish(asks[0].task_id).await.unwrap());
    assert!(!t.0.finish(asks[0].task_id).await.unwrap());
    assert_eq!(t.0.tenant_usage("a").await.unwrap().amount(AMD), 1);
    assert_eq!(t.0.snapshot().await.unwrap().node("amd").unwrap().requested.amount(AMD), 1);
    assert_eq!(t.0.reserve(&asks[2], "s", "amd").await.unwrap(), ReserveOutcome::Bound);
}

/// A node that stops offering an extended resource takes it out of the capacity, and a
/// re-publish of the same facts changes nothing.
#[tokio::test]
async fn a_node_dropping_an_extended_resource_leaves_the_capacity() {
    let t = TestQueue::new().await;
    t.0.upsert_node(&with_amd(node("a", 4000, 0), 4)).await.unwrap();
    t.0.upsert_node(&with_amd(node("b", 4000, 0), 2)).await.unwrap();
    assert_eq!(t.0.capacity().await.unwrap().amount(AMD), 6);
    assert!(!t.0.upsert_node(&with_amd(node("b", 4000, 0), 2)).await.unwrap(), "unchanged");
    assert!(t.0.upsert_node(&node("b", 4000, 0)).await.unwrap());
    assert_eq!(t.0.capacity().await.unwrap().amount(AMD), 4);
    assert_eq!(t.0.snapshot().await.unwrap().node("b").unwrap().allocatable.amount(AMD), 0);
    let mut cordoned = with_amd(node("a", 4000, 0), 4);
    cordoned.schedulable = false;
    t.0.upsert_node(&cordoned).await.unwrap();
    assert_eq!(t.0.capacity().await.unwrap().amount(AMD), 0);
    assert!(!t.0.upsert_node(&cordoned).await.unwrap());
}

/// Fair share sees an extended resource as a dominant resource like any other: a tenant
/// holding half the cluster's amd.com/gpu (and almost no cpu) has share 1/2.
#[tokio::test]
async fn an_extended_resource_can_be_the_dominant_share() {
    let t = TestQueue::new().await;
    t.0.upsert_node(&with_amd(node("n", 100_000, 0), 4)).await.unwrap();
    let mut heavy = spec("a", 0, 100);
    heavy.requests.extended.set(AMD, 2);
    t.0.enqueue(&heavy, Duration::ZERO).await.unwrap();
    t.0.claim("s", 1, LEASE).await.unwrap();
    assert_eq!(t.0.reserve(&heavy, "s", "n").await.unwrap(), ReserveOutcome::Bound);
    // b holds 30% of the cpu: below a's 1/2 only if amd.com/gpu counts.
    let b0 = spec("b", 0, 30_000);
    t.0.enqueue(&b0, Duration::ZERO).await.unwrap();
    t.0.claim("s", 1, LEASE).await.unwrap();
    assert_eq!(t.0.reserve(&b0, "s", "n").await.unwrap(), ReserveOutcome::Bound);
    let mut a_next = spec("a", 0, 100);
    a_next.requests.extended.set(AMD, 1);
    let b = spec("b", 0, 20_000);
    t.0.enqueue(&a_next, Duration::ZERO).await.unwrap();
    t.0.enqueue(&b, Duration::ZERO).await.unwrap();
    let shares: std::collections::BTreeMap<String, f64> = t.0.fair_shares("a").await.unwrap().into_iter().collect();
    assert!((shares["a"] - 0.5).abs() < 1e-9, "{shares:?}");
    assert!((shares["b"] - 0.3).abs() < 1e-9, "{shares:?}");
    // And claim orders by it: b's next goes before a's.
    let order = t.0.claim_ordered("s", 2, LEASE, berth_core::config::ClaimOrder::Drf).await.unwrap();
    let tenants: Vec<&str> = order.iter().map(|c| c.spec.tenant.as_str()).collect();
    assert_eq!(tenants, ["b", "a"]);
}

/// A task comes back from the queue exactly as it went in: selectors, tolerations, extended
/// resources, and requests left out (which the ledger reserves as defaults) still left out.
#[tokio::test]
async fn a_claimed_task_is_the_task_that_was_enqueued() {
    let t = TestQueue::new().await;
    let mut s = spec("a", 42, 0);
    s.requests = Resources::new(0, 0, 1).with_extended(AMD, 2);
    s.node_selector.insert("zone".into(), "b".into());
    s.tolerations.push(berth_core::Toleration {
        key: "dedicated".into(),
        operator: berth_core::TolerationOperator::Equal,
        value: "gpu".into(),
        effect: Some(berth_core::TaintEffect::NoSchedule),
    });
    s.attempt = 2;
    let plain = spec("a", 7, 250);
    t.0.enqueue(&s, Duration::ZERO).await.unwrap();
    t.0.enqueue(&plain, Duration::ZERO).await.unwrap();
    let claimed = t.0.claim("s", 2, LEASE).await.unwrap();
    let mut got = claimed.iter().find(|c| c.spec.task_id == s.task_id).unwrap().spec.clone();
    assert!(got.seq > 0);
    got.seq = 0;
    assert_eq!(got, s);
    let mut got = claimed.iter().find(|c| c.spec.task_id == plain.task_id).unwrap().spec.clone();
    got.seq = 0;
    assert_eq!(got, plain);
}

/// A task queued by an earlier version (its whole spec as JSON in `spec`) is claimed with
/// its constraints intact.
#[tokio::test]
async fn a_task_queued_in_the_earlier_format_keeps_its_constraints() {
    let t = TestQueue::new().await;
    let mut s = spec("a", 10, 300);
    s.node_selector.insert("zone".into(), "b".into());
    t.0.enqueue(&s, Duration::ZERO).await.unwrap();
    // Rewrite its hash as the earlier format had it.
    let key = format!("berth:{{{}}}:task:{}", t.1, s.task_id);
    let mut conn = t.0.connection();
    let _: () = redis::cmd("HDEL").arg(&key).arg("place").query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("spec")
        .arg(serde_json::to_string(&s).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    let claimed = t.0.claim("s", 1, LEASE).await.unwrap();
    assert_eq!(claimed[0].spec.node_selector, s.node_selector);
    assert_eq!(claimed[0].spec.requests, s.requests);
}

/// Pipelined scripts survive a server that lost its script cache (a restart, SCRIPT FLUSH).
#[tokio::test]
async fn pipelined_scripts_reload_after_the_script_cache_is_flushed() {
    let t = TestQueue::new().await;
    t.0.upsert_node(&node("n1", 4000, 0)).await.unwrap();
    let mut conn = t.0.connection();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
    let specs = vec![spec("a", 0, 100), spec("a", 0, 100)];
    t.0.enqueue_many(&specs).await.unwrap();
    assert_eq!(t.0.claim("s", 2, LEASE).await.unwrap().len(), 2);
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
    let pairs: Vec<(&SchedulingSpec, &str)> = specs.iter().map(|s| (s, "n1")).collect();
    assert_eq!(t.0.reserve_many("s", &pairs).await.unwrap(), vec![ReserveOutcome::Bound, ReserveOutcome::Bound]);
}
