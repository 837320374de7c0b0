//! Continuo plugin (placeholder until the plugin shell lands).
