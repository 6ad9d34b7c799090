//! What a reconcile reports: [`kubernetes`] Events (`events.k8s.io/v1`, repeats folded into a
//! series) and [`flux`] events posted to notification-controller.

pub mod flux;
pub mod kubernetes;
