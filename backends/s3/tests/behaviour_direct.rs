//! The core behaviour suite against a real SeaweedFS, direct mode, one bucket per case.

mod support;

use std::sync::Arc;

use externalsource_core::testing::Fixture;
use support::Weed;

async fn fixture() -> Fixture {
    let weed = Weed::shared().await;
    let bucket = weed.bucket().await;
    let storage = weed.storage_for(&bucket, |_| {}).await;
    Fixture::new(Arc::new(storage)).with_guard(weed)
}

externalsource_core::behaviour_suite!(fixture);
