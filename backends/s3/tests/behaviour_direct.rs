//! The core behaviour suite against a real SeaweedFS, direct mode, one bucket per case.

mod support;

use std::sync::Arc;

use externalsource_backend_s3::direct_url_base;
use externalsource_core::testing::Fixture;
use support::Weed;

async fn fixture() -> Fixture {
    let weed = Weed::shared().await;
    let bucket = weed.bucket().await;
    let storage = weed.storage_for(&bucket, |_| {}).await;
    let base = direct_url_base(storage.backend().settings());
    Fixture::new(Arc::new(storage)).with_guard(weed).with_url_base(base)
}

externalsource_core::behaviour_suite!(fixture);
