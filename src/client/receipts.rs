//! Delivered and read receipts of one room: how far each member says it has got, which
//! of our messages that covers, and when our own receipt is due.
//!
//! Receipts are cumulative sequence numbers ("I have received everything up to 42 and
//! shown it up to 40"), which the relay's in-order delivery makes exact, so one small
//! receipt answers any number of messages. They travel sealed like texts (see
//! docs/PROTOCOL.md, "Receipts"); this module only keeps the numbers. No I/O.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// At most one receipt per room in this interval: a burst of messages costs one.
pub const RECEIPT_INTERVAL: Duration = Duration::from_secs(2);

/// How many of our acknowledged messages per room are followed (the oldest are
/// forgotten first).
const OWN_MESSAGES_FOLLOWED: usize = 1_000;

/// What became of one of our messages, as far as receipts tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptSummary {
    /// The members it was sealed for, sorted.
    pub recipients: Vec<String>,
    /// Those who received it, sorted.
    pub delivered: Vec<String>,
    /// Those who saw it, sorted.
    pub read: Vec<String>,
}

/// How far one member has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Marks {
    delivered_through: u64,
    read_through: u64,
}

/// The receipts of one room.
#[derive(Debug, Default)]
pub struct Receipts {
    /// The highest numbers each other member has reported.
    theirs: BTreeMap<String, Marks>,
    /// Our acknowledged messages by sequence number: whom each was sealed for, and its
    /// text.
    own: BTreeMap<u64, (Vec<String>, String)>,
    /// How far we have got, and what we last told the room.
    ours: Marks,
    told: Marks,
    /// A text from someone else arrived, or was shown, since our last receipt.
    news: bool,
    last_sent: Option<Instant>,
}

impl Receipts {
    /// A member's receipt; returns whether it moved anything.
    pub fn take(&mut self, member: &str, delivered_through: u64, read_through: u64) -> bool {
        let marks = self.theirs.entry(member.to_owned()).or_default();
        let before = *marks;
        marks.delivered_through = marks.delivered_through.max(delivered_through);
        marks.read_through = marks.read_through.max(read_through.min(delivered_through));
        *marks != before
    }

    /// A member left: its receipts no longer count for later messages, and a member of
    /// that name joining again starts afresh.
    pub fn forget(&mut self, member: &str) {
        self.theirs.remove(member);
    }

    /// The relay stored our message `text` under `seq`, sealed for `recipients`.
    pub fn sent(&mut self, seq: u64, mut recipients: Vec<String>, text: &str) {
        recipients.sort();
        self.own.insert(seq, (recipients, text.to_owned()));
        while self.own.len() > OWN_MESSAGES_FOLLOWED {
            self.own.pop_first();
        }
    }

    /// We processed the room up to `seq`; `text` says whether a text from someone else
    /// is among what was processed (only texts call for a receipt).
    pub fn received(&mut self, seq: u64, text: bool) {
        self.ours.delivered_through = self.ours.delivered_through.max(seq);
        self.news |= text;
    }

    /// The person saw the room up to `seq` (a text from someone else).
    pub fn read(&mut self, seq: u64) {
        let seq = seq.min(self.ours.delivered_through);
        if seq > self.ours.read_through {
            self.ours.read_through = seq;
            self.news = true;
        }
    }

    /// Whether a receipt is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        let waited = self
            .last_sent
            .is_none_or(|last| now.duration_since(last) >= RECEIPT_INTERVAL);
        self.news && waited && self.ours != self.told
    }

    /// The receipt to send now, if one is due at `now`: `(delivered_through,
    /// read_through)`. Counts it as sent.
    pub fn due(&mut self, now: Instant) -> Option<(u64, u64)> {
        if !self.is_due(now) {
            return None;
        }
        self.news = false;
        self.last_sent = Some(now);
        self.told = self.ours;
        Some((self.ours.delivered_through, self.ours.read_through))
    }

    /// A receipt we sent was lost with the stream: tell the room again.
    pub fn resend(&mut self) {
        self.told = Marks::default();
        self.news = self.ours != Marks::default();
    }

    /// What receipts say of our message stored under `seq`, if it is followed.
    pub fn summary(&self, seq: u64) -> Option<ReceiptSummary> {
        let (recipients, _) = self.own.get(&seq)?;
        let reached = |read: bool| -> Vec<String> {
            recipients
                .iter()
                .filter(|member| {
                    self.theirs.get(*member).is_some_and(|marks| {
                        let through = if read {
                            marks.read_through
                        } else {
                            marks.delivered_through
                        };
                        through >= seq
                    })
                })
                .cloned()
                .collect()
        };
        Some(ReceiptSummary {
            recipients: recipients.clone(),
            delivered: reached(false),
            read: reached(true),
        })
    }

    /// Our followed messages: sequence number and text, the latest last.
    pub fn own_messages(&self) -> impl DoubleEndedIterator<Item = (u64, &str)> + '_ {
        self.own
            .iter()
            .map(|(seq, (_, text))| (*seq, text.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn a_message_is_delivered_and_read_by_those_it_was_sealed_for() {
        let mut receipts = Receipts::default();
        receipts.sent(10, names(&["carol", "bob"]), "hi");
        assert!(receipts.take("bob", 12, 9));
        // A newcomer's receipt covers numbers from before its time: it does not count.
        assert!(receipts.take("dave", 12, 12));
        let summary = receipts.summary(10).unwrap();
        assert_eq!(summary.recipients, names(&["bob", "carol"]));
        assert_eq!(summary.delivered, names(&["bob"]));
        assert!(summary.read.is_empty());
        assert!(receipts.take("carol", 10, 10));
        assert!(receipts.take("bob", 11, 11));
        let summary = receipts.summary(10).unwrap();
        assert_eq!(summary.delivered, names(&["bob", "carol"]));
        assert_eq!(summary.read, names(&["bob", "carol"]));
        assert_eq!(receipts.summary(11), None);
    }

    #[test]
    fn numbers_never_go_back_and_read_never_passes_delivered() {
        let mut receipts = Receipts::default();
        receipts.sent(5, names(&["bob"]), "hi");
        assert!(receipts.take("bob", 4, 9));
        assert!(receipts.summary(5).unwrap().read.is_empty());
        assert!(receipts.take("bob", 6, 6));
        assert!(!receipts.take("bob", 1, 1));
        assert_eq!(receipts.summary(5).unwrap().read, names(&["bob"]));
    }

    #[test]
    fn a_receipt_is_due_only_after_news_and_at_most_every_interval() {
        let mut receipts = Receipts::default();
        let start = Instant::now();
        // Processing receipts of others (not texts) moves the numbers but is no news.
        receipts.received(3, false);
        assert_eq!(receipts.due(start), None);
        receipts.received(4, true);
        assert_eq!(receipts.due(start), Some((4, 0)));
        receipts.received(6, true);
        receipts.read(6);
        assert_eq!(receipts.due(start + Duration::from_millis(500)), None);
        assert_eq!(receipts.due(start + RECEIPT_INTERVAL), Some((6, 6)));
        assert_eq!(receipts.due(start + RECEIPT_INTERVAL * 3), None);
        receipts.resend();
        assert_eq!(receipts.due(start + RECEIPT_INTERVAL * 3), Some((6, 6)));
    }

    #[test]
    fn only_the_latest_thousand_messages_are_followed() {
        let mut receipts = Receipts::default();
        for seq in 1..=1_001 {
            receipts.sent(seq, names(&["bob"]), "hi");
        }
        assert_eq!(receipts.summary(1), None);
        assert!(receipts.summary(2).is_some());
        assert_eq!(receipts.own_messages().next_back(), Some((1_001, "hi")));
    }
}
