//! Caps on what unpacking an image may write: per layer and per image, from `[images]
//! max_layer_mb` and `max_image_mb`. A layer's compressed size says nothing about what it
//! unpacks to (a 99-byte sparse archive can describe a 300 MB file), so the caps count bytes as
//! they are written and stop the unpack the moment one is crossed.

use crate::ImageError;

/// Bytes in the MB of the settings.
const MB: u64 = 1 << 20;

/// The caps, in MB as the settings give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Most one unpacked layer may take (`[images] max_layer_mb`).
    pub layer_mb: u64,
    /// Most the layers unpacked for one image may take together (`[images] max_image_mb`).
    pub image_mb: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            layer_mb: 8192,
            image_mb: 16384,
        }
    }
}

impl UnpackLimits {
    /// The settings' values, each defaulting when unset.
    pub fn from_settings(max_layer_mb: Option<u64>, max_image_mb: Option<u64>) -> UnpackLimits {
        let default = UnpackLimits::default();
        UnpackLimits {
            layer_mb: max_layer_mb.unwrap_or(default.layer_mb),
            image_mb: max_image_mb.unwrap_or(default.image_mb),
        }
    }
}

/// Which cap was crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Layer { cap_mb: u64 },
    Image { cap_mb: u64 },
}

impl Exceeded {
    /// The error for layer `digest`.
    pub(crate) fn error(self, digest: &str) -> ImageError {
        let (cap_mb, scope, key) = match self {
            Exceeded::Layer { cap_mb } => (cap_mb, "one layer", "max_layer_mb"),
            Exceeded::Image { cap_mb } => (cap_mb, "one image", "max_image_mb"),
        };
        ImageError::UnpackTooLarge {
            digest: digest.to_string(),
            cap_mb,
            scope,
            key,
        }
    }
}

/// What preparing one image has written so far: the layers finished, and the layer being
/// unpacked. Layers already in the store cost nothing: they take no new space.
#[derive(Debug)]
pub(crate) struct Budget {
    limits: UnpackLimits,
    finished_layers: u64,
    layer: u64,
}

impl Budget {
    pub(crate) fn new(limits: UnpackLimits) -> Budget {
        Budget {
            limits,
            finished_layers: 0,
            layer: 0,
        }
    }

    /// Counts `bytes` more for the layer being unpacked; fails once a cap is crossed.
    pub(crate) fn charge(&mut self, bytes: u64) -> Result<(), Exceeded> {
        self.layer = self.layer.saturating_add(bytes);
        if self.layer > self.limits.layer_mb.saturating_mul(MB) {
            return Err(Exceeded::Layer {
                cap_mb: self.limits.layer_mb,
            });
        }
        if self.finished_layers.saturating_add(self.layer) > self.limits.image_mb.saturating_mul(MB)
        {
            return Err(Exceeded::Image {
                cap_mb: self.limits.image_mb,
            });
        }
        Ok(())
    }

    /// What the layer being unpacked has cost so far.
    pub(crate) fn layer_bytes(&self) -> u64 {
        self.layer
    }

    /// Starts the next layer: the last one's bytes now count for the image only (it was
    /// installed), or not at all (it failed and was removed).
    pub(crate) fn next_layer(&mut self, kept: bool) {
        if kept {
            self.finished_layers = self.finished_layers.saturating_add(self.layer);
        }
        self.layer = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_and_image_caps_are_separate() {
        let mut b = Budget::new(UnpackLimits {
            layer_mb: 2,
            image_mb: 3,
        });
        b.charge(2 * MB).expect("a layer may reach its cap");
        assert_eq!(b.charge(1), Err(Exceeded::Layer { cap_mb: 2 }));
        b.next_layer(false);
        b.charge(2 * MB)
            .expect("a failed layer does not count for the image");
        b.next_layer(true);
        b.charge(MB).expect("the image may reach its cap");
        assert_eq!(b.charge(1), Err(Exceeded::Image { cap_mb: 3 }));
        let e = Exceeded::Image { cap_mb: 3 }.error("sha256:ab");
        let text = e.to_string();
        assert!(
            text.contains("sha256:ab") && text.contains("3 MB") && text.contains("max_image_mb"),
            "{text}"
        );
    }

    #[test]
    fn unset_settings_take_the_defaults() {
        assert_eq!(
            UnpackLimits::from_settings(None, Some(5)),
            UnpackLimits {
                layer_mb: 8192,
                image_mb: 5
            }
        );
    }
}
