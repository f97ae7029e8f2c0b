//! The attack suite, scaled down: seconds, not minutes. Hard targets only: with the
//! key no stranger enters, no proof is obtained, quotas hold, and descriptors come
//! back to their baseline. (The `pool-attack` binary runs the full sizes.)

use pool_testkit::attack::{self, Crowd, Scale};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_scaled_down() {
    let _ = pool_testkit::process::raise_nofile();
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    let baseline = open_fds();
    let scale = Scale::quick();
    for a in [
        Crowd::Silent,
        Crowd::TlsSilent,
        Crowd::Slowloris,
        Crowd::Flood,
    ] {
        for with_key in [true, false] {
            let r = attack::crowd(a, with_key, scale).await.unwrap();
            println!("{} key={with_key}: {r:?}", a.name());
            assert!(
                r.max_per_source <= scale.capacity,
                "a source above its idle quota"
            );
            if with_key {
                assert_eq!(r.strangers_admitted, 0, "{} with the key", a.name());
                assert!(r.fill.is_some(), "{}: the client filled", a.name());
                assert!(r.served_retry_pct >= 100.0, "{}: {r:?}", a.name());
            }
        }
    }
    assert_eq!(attack::oracle(scale.replays).await.unwrap(), 0, "oracle");
    assert_eq!(attack::replay(scale.replays).await.unwrap(), 0, "replay");
    assert_eq!(attack::relay(8).await.unwrap(), 0, "relay");
    let mut fds = open_fds();
    for _ in 0..500 {
        if fds <= baseline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        fds = open_fds();
    }
    assert!(
        fds <= baseline,
        "descriptors leaked: {fds} open, baseline {baseline}"
    );
}
