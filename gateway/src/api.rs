//! HTTP handlers, one module per audience: operations, admin, tenant API, provider webhooks.

pub mod admin;
pub mod ops;
pub mod tenant;
pub mod views;
pub mod webhooks;
