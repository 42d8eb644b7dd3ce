
pub mod netns;
