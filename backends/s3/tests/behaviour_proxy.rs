//! The core behaviour suite against a real SeaweedFS in proxy mode with a key prefix (so every
//! case also exercises prefix handling), one bucket per case.

mod support;

use std::sync::Arc;

use externalsource_backend_s3::Mode;
use externalsource_core::testing::Fixture;
use support::Weed;

async fn fixture() -> Fixture {
    let weed = Weed::shared().await;
    let bucket = weed.bucket().await;
    let storage = weed
        .storage_for(&bucket, |s| {
            s.mode = Mode::Proxy;
            s.prefix = "tenants/blue/".to_owned();
        })
        .await;
    // The prefix is the bucket's business: the controller's server is asked for the bare key.
    Fixture::new(Arc::new(storage)).with_guard(weed).with_url_base("http://artifacts.test:8080/")
}

externalsource_core::behaviour_suite!(fixture);
