//! The upstream side of a fetch: the HTTP [`client`], the [`egress`] policy it enforces (with
//! the [`https`] rule), and the [`redact`]ion of URLs before they are shown.

pub mod client;
pub mod egress;
pub mod https;
pub mod redact;
