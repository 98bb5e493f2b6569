//! What each feature adds to the build lives with the feature (crate::features); this
//! module re-exports the build fragment types the renderers use.

pub use crate::features::{enable_units, fragments, Fragment, Step, WriteFile};
