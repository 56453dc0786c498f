-- +goose Up

-- Every row is written twice: inserted pending, then its published_at
-- set once the broker confirmed it. That update can never be HOT (the
-- pending indexes' predicates name published_at), but when the new
-- version fits on the page of the old one the WAL record holds only the
-- bytes that changed (prefix and suffix compression), and no other page is
-- dirtied. Inserts fill a page only halfway, leaving that room: the mark's
-- WAL per row fell from about 790 to 390 bytes in a drain (docs/benchmarks.md).
-- The table is no bigger once its rows are published: the second half of
-- each page holds their published versions, where before they went to
-- other pages. Applies to pages written from now on; nothing is rewritten.
ALTER TABLE outbox SET (fillfactor = 50);

-- +goose Down
ALTER TABLE outbox RESET (fillfactor);
