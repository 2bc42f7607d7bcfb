//! Span text that many spans share: a route, a span name, a host. Each distinct text is
//! allocated once and then shared ([`Text::Shared`]), so a span of a known route costs no
//! allocation for its name, route or host.

use std::{collections::HashSet, sync::Arc};

use super::{model::Text, route::route_into};

/// How many distinct texts are shared. Past that, a new text is allocated per span (and
/// nothing is lost): a service with more routes than this has ids loupe does not collapse.
pub const NAMES_CAP: usize = 8192;

/// The shared texts, and the buffer a name is assembled in before it is looked up.
#[derive(Default)]
pub struct Names {
    texts: HashSet<Arc<str>, rustc_hash::FxBuildHasher>,
    scratch: String,
}

/// The names of a request: its span name (`GET /users/{id}`) and route (`/users/{id}`).
pub struct RouteNames {
    pub name: Text,
    pub route: Text,
}

impl Names {
    /// `text`, shared when it has been seen before or there is room to remember it.
    pub fn text(&mut self, text: &str) -> Text {
        if let Some(shared) = self.texts.get(text) {
            return Text::Shared(shared.clone());
        }
        if self.texts.len() >= NAMES_CAP {
            return Text::Owned(text.to_owned());
        }
        let shared: Arc<str> = Arc::from(text);
        self.texts.insert(shared.clone());
        Text::Shared(shared)
    }

    /// The span name and route of a request to `path` with `method`.
    pub fn route(&mut self, method: &str, path: &str) -> RouteNames {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.push_str(method);
        scratch.push(' ');
        route_into(path, &mut scratch);
        let name = self.text(&scratch);
        let route = self.text(&scratch[method.len() + 1..]);
        self.scratch = scratch;
        RouteNames { name, route }
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_route_is_shared_not_copied() {
        let mut names = Names::default();
        let first = names.route("GET", "/users/42");
        let second = names.route("GET", "/users/7");
        assert_eq!(first.name, "GET /users/{id}");
        assert_eq!(first.route, "/users/{id}");
        let (Text::Shared(a), Text::Shared(b)) = (&first.name, &second.name) else {
            panic!("names are shared");
        };
        assert!(Arc::ptr_eq(a, b));
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn past_the_cap_texts_are_owned_and_still_right() {
        let mut names = Names::default();
        for i in 0..NAMES_CAP {
            names.text(&format!("host-{i}"));
        }
        let past = names.text("one-more");
        assert!(matches!(past, Text::Owned(_)));
        assert_eq!(past, "one-more");
        assert!(matches!(names.text("host-3"), Text::Shared(_)));
        assert_eq!(names.len(), NAMES_CAP);
    }

    #[test]
    fn the_root_path_is_its_own_route() {
        let mut names = Names::default();
        let root = names.route("POST", "");
        assert_eq!(root.name, "POST /");
        assert_eq!(root.route, "/");
    }
}
