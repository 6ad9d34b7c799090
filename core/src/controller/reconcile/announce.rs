//! Reconciling=True for a new generation whose fetch and store take a while.
//!
//! A quicker one goes straight to its final status, one write instead of two. Until then,
//! `observedGeneration < generation` already tells kstatus it is in progress.

use std::future::Future;
use std::time::Duration;

use crate::controller::api::ExternalSourceStatus;
use crate::controller::context::Context;
use crate::controller::finish::write_status;
use crate::controller::outcome::{self, Outcome};
use crate::controller::reconcile::error::Error;
use crate::controller::reconcile::scope::Scope;

/// How long a reconcile of a new generation runs before it writes Reconciling=True.
const ANNOUNCE_AFTER: Duration = Duration::from_secs(1);

/// Runs `work`, announcing a new generation if it takes longer than [`ANNOUNCE_AFTER`]; returns
/// its outcome and the status written meanwhile, if one was.
pub async fn if_slow(
    scope: &Scope<'_>,
    ctx: &Context,
    work: impl Future<Output = Outcome>,
) -> Result<(Outcome, Option<ExternalSourceStatus>), Error> {
    let Some(announcement) = outcome::progressing_status(&scope.status, scope.generation()) else {
        return Ok((work.await, None));
    };
    tokio::pin!(work);
    tokio::select! {
        outcome = &mut work => Ok((outcome, None)),
        () = tokio::time::sleep(ANNOUNCE_AFTER) => {
            write_status(ctx, scope, &scope.status, &announcement).await?;
            Ok((work.await, Some(announcement)))
        }
    }
}
