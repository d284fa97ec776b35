//! [`RenderCache`]: wire renderings of stored items, reused while the stored text is unchanged.
//! A performance measure of the API layer, kept here rather than in the domain: the domain hands
//! out the stored items ([`tern_core::Service::list_jobs_raw`]) and this layer decides how to
//! render and reuse them.
//!
//! A listing page of fifty replication jobs used to parse fifty stored JSON bodies into the
//! domain types and serialise fifty wire shapes on every request, which was nearly all of
//! GetReplicationJobs' cost. The rendering of a body is a pure function of its stored text, so
//! it is kept next to that text and reused as long as the store hands out exactly the same text:
//! a changed item (any write changes its body or version, and the body carries no version, so
//! the text is compared whole) is rendered afresh. Items of adapters that do not keep text
//! ([`Body::Json`]) are rendered every time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tern_core::store::{Body, Key, RawItem};
use tern_core::DomainError;

type Result<T> = std::result::Result<T, DomainError>;

/// Renderings of stored items, keyed by item key and checked against the stored text. One cache
/// belongs to one rendering function (its owner's). Bounded: when full it starts over.
#[derive(Debug)]
pub struct RenderCache {
    capacity: usize,
    entries: Mutex<HashMap<Key, Entry>>,
}

#[derive(Debug)]
struct Entry {
    /// The stored text the rendering was made from.
    source: Box<str>,
    rendered: Arc<[u8]>,
}

impl RenderCache {
    /// A cache of at most `capacity` renderings.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Number of renderings held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        // Entries are inserted whole; a panic elsewhere cannot leave one half-written.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The rendering of every item, in order: reused when the item's stored text is the one it
    /// was rendered from, otherwise made by `render` (and kept when the item is text).
    pub fn render_all(
        &self,
        items: Vec<RawItem>,
        mut render: impl FnMut(RawItem) -> Result<Vec<u8>>,
    ) -> Result<Vec<Arc<[u8]>>> {
        let mut out: Vec<Option<Arc<[u8]>>> = Vec::with_capacity(items.len());
        let mut misses = Vec::new();
        {
            let entries = self.lock();
            for (index, item) in items.into_iter().enumerate() {
                let hit = match (&item.body, entries.get(&item.key)) {
                    (Body::Text(text), Some(e)) if *e.source == **text => Some(e.rendered.clone()),
                    _ => None,
                };
                if hit.is_none() {
                    misses.push((index, item));
                }
                out.push(hit);
            }
        }
        if !misses.is_empty() {
            let mut fresh = Vec::with_capacity(misses.len());
            for (index, item) in misses {
                let source = match &item.body {
                    Body::Text(text) => Some((item.key.clone(), Box::<str>::from(text.as_str()))),
                    Body::Json(_) => None,
                };
                let rendered: Arc<[u8]> = render(item)?.into();
                if let Some((key, source)) = source {
                    fresh.push((
                        key,
                        Entry {
                            source,
                            rendered: rendered.clone(),
                        },
                    ));
                }
                out[index] = Some(rendered);
            }
            let mut entries = self.lock();
            for (key, entry) in fresh {
                if entries.len() >= self.capacity && !entries.contains_key(&key) {
                    entries.clear();
                }
                if self.capacity > 0 {
                    entries.insert(key, entry);
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(sk: &str, body: &str) -> RawItem {
        RawItem {
            key: Key::new("P", sk),
            version: 1,
            body: Body::Text(body.into()),
        }
    }

    /// Renders the body's `n` and counts the calls.
    fn renderer(calls: &mut usize) -> impl FnMut(RawItem) -> Result<Vec<u8>> + '_ {
        move |item| {
            *calls += 1;
            let v: serde_json::Value = item.body.decode().unwrap();
            Ok(format!("<{}>", v["n"]).into_bytes())
        }
    }

    #[test]
    fn unchanged_text_is_rendered_once_and_changed_text_again() {
        let cache = RenderCache::new(10);
        let mut calls = 0;
        let out = cache
            .render_all(
                vec![text("a", r#"{"n":1}"#), text("b", r#"{"n":2}"#)],
                renderer(&mut calls),
            )
            .unwrap();
        assert_eq!(out, vec![Arc::from(&b"<1>"[..]), Arc::from(&b"<2>"[..])]);
        assert_eq!(calls, 2);

        let mut calls = 0;
        let out = cache
            .render_all(
                vec![text("a", r#"{"n":1}"#), text("b", r#"{"n":3}"#)],
                renderer(&mut calls),
            )
            .unwrap();
        assert_eq!(out, vec![Arc::from(&b"<1>"[..]), Arc::from(&b"<3>"[..])]);
        assert_eq!(calls, 1, "only the changed item is rendered");
    }

    #[test]
    fn json_bodies_are_never_kept_and_the_cache_stays_bounded() {
        let cache = RenderCache::new(2);
        let mut calls = 0;
        let json_item = RawItem {
            key: Key::new("P", "j"),
            version: 1,
            body: Body::Json(json!({"n": 7})),
        };
        for _ in 0..2 {
            let out = cache
                .render_all(vec![json_item.clone()], renderer(&mut calls))
                .unwrap();
            assert_eq!(out, vec![Arc::from(&b"<7>"[..])]);
        }
        assert_eq!(calls, 2);
        assert!(cache.is_empty());

        let items: Vec<_> = (0..5).map(|n| text(&n.to_string(), r#"{"n":0}"#)).collect();
        cache.render_all(items, renderer(&mut calls)).unwrap();
        assert!(cache.len() <= 2, "holds {}", cache.len());
    }

    #[test]
    fn a_failed_rendering_is_an_error_and_keeps_nothing() {
        let cache = RenderCache::new(10);
        let err = cache
            .render_all(vec![text("a", "{}")], |_| {
                Err(DomainError::Corrupt {
                    key: "P/a".into(),
                    message: "bad".into(),
                })
            })
            .unwrap_err();
        assert!(err.to_string().contains("P/a"));
        assert!(cache.is_empty());
    }
}
