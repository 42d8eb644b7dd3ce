//! Counters named once.
//!
//! [`named_counters!`] declares a struct of `u64` counters together with
//! the listing by name that the metrics listener and `GET /counters`
//! serve. A counter added to the struct is served by
//! construction: there is no second list to forget it in.

/// A struct of `u64` counters (each `pub`, with its doc), with
/// `counts()` and `named()`: every counter by its field's name. Fields of
/// other types may follow in an `and { ... }` block: they are not
/// counters, and not listed.
macro_rules! named_counters {
    (
        $(#[$meta:meta])*
        pub struct $ty:ident {
            $($(#[$doc:meta])* $name:ident,)*
        }
        $(and {
            $($(#[$xdoc:meta])* pub $xname:ident: $xty:ty,)*
        })?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $ty {
            $($(#[$doc])* pub $name: u64,)*
            $($($(#[$xdoc])* pub $xname: $xty,)*)?
        }

        impl $ty {
            /// Every counter with its name, in the order declared.
            pub fn counts(
                &self,
            ) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($name), self.$name),)*].into_iter()
            }

            /// Every counter by name.
            pub fn named(&self) -> std::collections::BTreeMap<String, u64> {
                self.counts().map(|(k, v)| (k.to_string(), v)).collect()
            }
        }
    };
}

pub(crate) use named_counters;

#[cfg(test)]
mod tests {
    named_counters! {
        /// Two counters and a field beside them.
        pub struct Two {
            /// One.
            first,
            /// Another.
            second,
        }
        and {
            /// Not a counter.
            pub label: char,
        }
    }

    #[test]
    fn every_counter_is_listed_by_name_and_nothing_else() {
        let two = Two { first: 2, second: 3, label: 'x' };
        let counts: Vec<_> = two.counts().collect();
        assert_eq!(counts, [("first", 2), ("second", 3)]);
        let named: Vec<(String, u64)> = two.named().into_iter().collect();
        assert_eq!(
            named,
            [("first".to_string(), 2), ("second".to_string(), 3)]
        );
    }
}
