//! Recipes: the YAML a user writes, its validation, and the resolved [`plan::Plan`] the stages run.

pub mod plan;
