//! End-to-end test support for Continuo.
