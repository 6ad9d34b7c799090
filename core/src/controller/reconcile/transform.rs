//! The transform step: `spec.transform`'s jq filter over the payload, run in the sandbox.

use bytes::Bytes;

use crate::controller::context::Context;
use crate::controller::outcome::{self, Outcome, Stored};
use crate::controller::reconcile::plan::Plan;

/// The payload after `spec.transform`, or the body itself without one.
pub async fn transform(ctx: &Context, plan: &Plan, body: Bytes) -> Result<Bytes, Outcome> {
    let Some(code) = &plan.transform else { return Ok(body) };
    match ctx.transforms.run(code, &body, plan.max_size).await {
        Ok(out) => Ok(out.into()),
        Err(e) => Err(outcome::after_store(Stored::TransformFailed(e), None)),
    }
}
