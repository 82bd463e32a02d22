//! Registry pulls. The client (auth, mirrors, blob download into an OCI layout under the
//! store) slots in here; once a pull has produced a layout, `layout::prepare` unpacks it.

use crate::{ImageError, Rootfs};
use std::path::Path;

pub(crate) fn resolve(_store: &Path, reference: &str) -> Result<Rootfs, ImageError> {
    Err(ImageError::RegistryUnavailable {
        reference: reference.to_string(),
    })
}
