//! HTTP handlers, one module per audience: operations, admin, tenant API and its dashboard
//! stream, provider webhooks.

pub mod admin;
pub mod auth;
pub mod ops;
pub mod stream;
pub mod tenant;
pub mod views;
pub mod webhooks;
