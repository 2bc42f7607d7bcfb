//! Which ReadyForQuery answers which sync point, and what the server said before it.
//!
//! The server answers a client's messages in order and ends each sync point (a simple Query, a
//! Sync) with one ReadyForQuery. A chunk loupe lost (an event the kernel could not deliver)
//! takes a sync point or its answer with it; pairing them in order would then hand every later
//! answer to the query before its own. So each sync point owns the queries it closes, what the
//! server said since its last ReadyForQuery is kept as one [`Answer`], and a ReadyForQuery picks
//! the sync point it answers ([`pick`]): one sent before it was read, whose shape the answer
//! fits (a simple Query is answered without ParseComplete or BindComplete; a Sync with as many
//! as its batch had Parses and Binds, and one completion per execution unless one failed), and,
//! for a client that waits for its answers, the newest such: the older ones' answers were lost.

use crate::protocols::Timing;

/// Queries waiting for their answer on one connection, at most: past it the oldest is dropped.
pub(super) const MAX_WAITING: usize = 1024;
/// Sync points waiting for their ReadyForQuery, at most: past it the oldest is dropped.
pub(super) const MAX_MARKERS: usize = 256;

/// A query sent and not yet answered.
pub(super) struct Pending {
    pub seq: u64,
    pub text: String,
    pub text_truncated: bool,
    pub statement_name: Option<String>,
    pub values: Option<u64>,
    pub start: Timing,
}

/// What a sync point asked for, so that the answer it gets can be checked against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(super) struct Batch {
    pub parses: u32,
    pub binds: u32,
    pub executions: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Point {
    /// A simple Query: its one query ends at its ReadyForQuery.
    Simple,
    /// A Sync after a batch of extended-protocol messages.
    Sync(Batch),
    /// A batch whose Sync went unseen (the client's framing was lost): any answer fits it.
    Unknown,
}

/// A sync point sent, and the queries it closes, in order.
pub(super) struct Marker {
    pub point: Point,
    /// The chunk that sent it: its answer cannot have been read before.
    pub sent: Timing,
    pub queries: Vec<Pending>,
    /// Its first queries that were dropped by [`MAX_WAITING`]: the answer's first completions
    /// are theirs.
    pub dropped: usize,
}

/// How one execution (or the one simple Query) ended.
#[derive(Debug, Default)]
pub(super) struct End {
    pub at: Timing,
    pub tag_rows: Option<u64>,
    pub data_rows: u64,
    pub sqlstate: Option<String>,
}

/// What the server said since its last ReadyForQuery.
#[derive(Debug, Default)]
pub(super) struct Answer {
    parses: u32,
    binds: u32,
    suspended: u32,
    errors: u32,
    /// Completions (CommandComplete, EmptyQueryResponse, PortalSuspended, ErrorResponse), in
    /// order, at most [`MAX_WAITING`] kept; `completions` counts them all.
    pub ends: Vec<End>,
    completions: u32,
    /// DataRows since the last completion.
    rows: u64,
}

impl Answer {
    pub fn parse_complete(&mut self) {
        self.parses += 1;
    }

    pub fn bind_complete(&mut self) {
        self.binds += 1;
    }

    pub fn row(&mut self) {
        self.rows += 1;
    }

    /// A CommandComplete (`tag`), EmptyQueryResponse or PortalSuspended (`suspended`).
    pub fn complete(&mut self, at: Timing, tag_rows: Option<u64>, suspended: bool) {
        self.suspended += u32::from(suspended);
        self.end(End {
            at,
            tag_rows,
            data_rows: 0,
            sqlstate: None,
        });
    }

    pub fn error(&mut self, at: Timing, sqlstate: Option<String>) {
        self.errors += 1;
        self.end(End {
            at,
            tag_rows: None,
            data_rows: 0,
            sqlstate,
        });
    }

    fn end(&mut self, mut end: End) {
        end.data_rows = std::mem::take(&mut self.rows);
        self.completions += 1;
        if self.ends.len() < MAX_WAITING {
            self.ends.push(end);
        }
    }

    /// Nothing a query could be made of (the ReadyForQuery after start-up, a bare Sync).
    pub fn is_empty(&self) -> bool {
        self.completions == 0
    }

    /// Whether this could be the answer to `point`.
    pub fn fits(&self, point: Point) -> bool {
        match point {
            Point::Simple => {
                self.parses == 0 && self.binds == 0 && self.suspended == 0 && self.completions > 0
            }
            Point::Sync(batch) if self.errors == 0 => {
                self.parses == batch.parses
                    && self.binds == batch.binds
                    && self.completions == batch.executions
            }
            // After an error the server skips the rest of the batch; the error is its last word.
            Point::Sync(batch) => {
                self.errors == 1
                    && self.parses <= batch.parses
                    && self.binds <= batch.binds
                    && self.completions <= batch.executions.max(1)
            }
            Point::Unknown => true,
        }
    }
}

/// How a query waiting for its answer came out.
pub(super) enum Settled {
    /// It ended at `end`.
    Done {
        query: Pending,
        end: Timing,
        rows: Option<u64>,
        sqlstate: Option<String>,
    },
    /// The server skipped it (an earlier execution of its batch failed).
    Skipped(Pending),
}

/// Settles `marker`'s queries with what its answer said (`answer`), ended at `at`: its
/// ReadyForQuery, or, `cut` short, the server's last chunk when the rest of the answer went
/// past the capture (rows not counted whole are then not reported, and a query without its
/// completion ends there rather than being skipped).
pub(super) fn settle(marker: Marker, answer: Answer, at: Timing, cut: bool) -> Vec<Settled> {
    let Marker {
        point,
        queries,
        dropped,
        ..
    } = marker;
    match point {
        Point::Simple => {
            let ends = answer.ends;
            let tags = ends.iter().filter_map(|e| e.tag_rows).reduce(|a, b| a + b);
            let data_rows: u64 = ends.iter().map(|e| e.data_rows).sum();
            let rows = tags.or((!cut && data_rows > 0).then_some(data_rows));
            let sqlstate = ends.into_iter().find_map(|e| e.sqlstate);
            queries
                .into_iter()
                .map(|query| Settled::Done {
                    query,
                    end: at,
                    rows,
                    sqlstate: sqlstate.clone(),
                })
                .collect()
        }
        Point::Sync(_) | Point::Unknown => {
            let mut ends = answer.ends.into_iter().skip(dropped);
            queries
                .into_iter()
                .map(|query| match ends.next() {
                    Some(end) => Settled::Done {
                        query,
                        end: end.at,
                        rows: end
                            .tag_rows
                            .or((end.data_rows > 0).then_some(end.data_rows)),
                        sqlstate: end.sqlstate,
                    },
                    // Rows past the lost framing were not counted: say nothing rather than
                    // too few.
                    None if cut => Settled::Done {
                        query,
                        end: at,
                        rows: None,
                        sqlstate: None,
                    },
                    None => Settled::Skipped(query),
                })
                .collect()
        }
    }
}

/// The sync point a ReadyForQuery read in `read` answers, among `markers` in the order they
/// were sent, given what the server said before it (`answer`) and how many more
/// ReadyForQuery the same chunk carries (`after`): the first that fits, or for a client that
/// waits for each answer before it sends again (`sequential`) the newest sent before the read
/// (less those the chunk's later ReadyForQuery answer). None: it answers something loupe did
/// not see.
pub(super) fn pick(
    markers: &[Marker],
    answer: &Answer,
    read: Timing,
    after: usize,
    sequential: bool,
) -> Option<usize> {
    let eligible = markers
        .iter()
        .take_while(|m| m.sent.enter_ns <= read.exit_ns)
        .count();
    if eligible == 0 {
        return None;
    }
    let fits = |i: &usize| answer.fits(markers[*i].point);
    if sequential {
        let newest = eligible - 1 - after.min(eligible - 1);
        if fits(&newest) {
            return Some(newest);
        }
    }
    (0..eligible).find(fits)
}
