//! Models of K components: one Gaussian per class, each with its label and item count.
//!
//! Component 0's arrays live in the [`Model`] itself (so a one-component model is what it
//! always was); components 1..K are one-component models held inside it. The operations pick
//! a component per row (see `Context::apply_components`).

use std::collections::HashSet;

use super::{item_shape_fits, Model, ModelMeta};
use crate::error::{Error, Result};

/// Most components a model may hold (a bound for hostile files; ImageNet has 1,000 classes).
pub const MAX_COMPONENTS: usize = 1 << 16;

impl Model {
    /// This model with component 0 labelled `label` (a one-component model's class name).
    pub fn with_label(mut self, label: impl Into<String>) -> Model {
        self.label = label.into();
        self
    }

    /// Joins one-component models (each built by [`Model::from_parts`] and labelled with
    /// [`Model::with_label`]; its `meta().sample_count` is its item count) into one model of
    /// K components. `meta` describes the whole model; its `sample_count` becomes the sum of
    /// the components' counts.
    ///
    /// # Errors
    /// `InvalidArgument` for no components, more than [`MAX_COMPONENTS`], a component that
    /// has components itself, or labels that are not distinct (or empty, when K > 1);
    /// `ShapeMismatch` when the components' dimensions differ; `InvalidModel` when
    /// `meta.item_shape` does not have `dim` elements.
    pub fn from_components(components: Vec<Model>, meta: ModelMeta) -> Result<Model> {
        let k = components.len();
        if k == 0 || k > MAX_COMPONENTS {
            return Err(Error::arg(
                "components",
                format!("needs 1..={MAX_COMPONENTS} components, got {k}"),
            ));
        }
        let dim = components[0].dim;
        let mut seen = HashSet::new();
        for (i, c) in components.iter().enumerate() {
            if c.n_components() != 1 {
                return Err(Error::arg(
                    "components",
                    format!("component {i} holds {} components itself", c.n_components()),
                ));
            }
            if c.dim != dim {
                return Err(Error::shape(
                    "components",
                    format!("every component of dim {dim} (as component 0)"),
                    c.dim,
                ));
            }
            if k > 1 && c.label.is_empty() {
                return Err(Error::arg(
                    "components",
                    format!(
                        "component {i} has no label (every component of a model of {k} needs one)"
                    ),
                ));
            }
            if !seen.insert(c.label.as_str()) {
                return Err(Error::arg(
                    "components",
                    format!("label {:?} is used by two components", c.label),
                ));
            }
        }
        if !item_shape_fits(&meta.item_shape, dim) {
            return Err(Error::InvalidModel(format!(
                "item shape {:?} does not have {dim} elements",
                meta.item_shape
            )));
        }
        let total = components
            .iter()
            .try_fold(0u64, |a, c| a.checked_add(c.count))
            .ok_or_else(|| Error::arg("components", "the item counts overflow"))?;
        let mut parts = components.into_iter();
        let mut head = parts.next().expect("k >= 1");
        head.meta = ModelMeta {
            sample_count: total,
            ..meta.clone()
        };
        head.others = parts
            .map(|mut c| {
                c.meta = ModelMeta {
                    sample_count: c.count,
                    ..meta.clone()
                };
                c
            })
            .collect();
        Ok(head)
    }

    /// Number of components K (1 for an unconditional model).
    pub fn n_components(&self) -> usize {
        1 + self.others.len()
    }

    /// Component 0's label (empty for an unconditional model).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Items component 0 was fitted on (for a one-component model, `meta().sample_count`).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The labels of all components, in order.
    pub fn labels(&self) -> Vec<&str> {
        std::iter::once(self.label.as_str())
            .chain(self.others.iter().map(|c| c.label.as_str()))
            .collect()
    }

    /// The item counts of all components, in order.
    pub fn counts(&self) -> Vec<u64> {
        std::iter::once(self.count)
            .chain(self.others.iter().map(|c| c.count))
            .collect()
    }

    /// The index of the component labelled `label`.
    pub fn component_index(&self, label: &str) -> Option<usize> {
        self.labels().iter().position(|&l| l == label)
    }

    /// Component `k` as a new one-component model (a copy: mean, eigenpairs, residual
    /// variance, label; its `sample_count` is the component's item count).
    ///
    /// # Errors
    /// `InvalidArgument` when `k >= n_components()`; `OutOfMemory`.
    pub fn component(&self, k: usize) -> Result<Model> {
        let c = self.check_component(k)?;
        let meta = ModelMeta {
            sample_count: c.count,
            ..self.meta.clone()
        };
        let copy = |v: &[f32]| crate::error::try_copy(v, "a component's arrays");
        let model = Model::from_parts(
            copy(&c.mean)?,
            crate::error::try_copy(&c.eigvals, "a component's arrays")?,
            copy(&c.eigvecs)?,
            c.residual_var,
            meta,
        )?;
        Ok(model.with_label(c.label.clone()))
    }

    /// A copy of this model, every component, with the whole model's metadata replaced by
    /// `meta` (its `sample_count` is again the sum of the components' counts).
    ///
    /// # Errors
    /// `OutOfMemory`; `InvalidModel` when `meta.item_shape` does not fit the dimension.
    pub fn with_meta(&self, meta: ModelMeta) -> Result<Model> {
        let parts = (0..self.n_components())
            .map(|k| self.component(k))
            .collect::<Result<Vec<_>>>()?;
        Model::from_components(parts, meta)
    }

    /// Component `k`'s Gaussian, for the backends (they read only its arrays and identity).
    pub(crate) fn part(&self, k: usize) -> &Model {
        if k == 0 {
            self
        } else {
            &self.others[k - 1]
        }
    }

    /// [`Model::part`] with a range check.
    pub(crate) fn check_component(&self, k: usize) -> Result<&Model> {
        if k >= self.n_components() {
            return Err(Error::arg(
                "component",
                format!(
                    "{k} is out of range: the model has {} component(s)",
                    self.n_components()
                ),
            ));
        }
        Ok(self.part(k))
    }

    /// The largest rank over the components.
    pub fn max_rank(&self) -> usize {
        self.others
            .iter()
            .map(|c| c.rank)
            .fold(self.rank, usize::max)
    }
}
