//! How record operations reach the worker that owns their id (`id % peers`) without being
//! copied on the way.
//!
//! Timely's `Exchange` pact copies each operation (~270 bytes) into a buffer per destination
//! worker. Instead, a worker sorts the operations it makes by owner as it makes them
//! ([`OpsByOwner`]), so that each container it sends has a single owner, and [`by_owner`] moves
//! such a container to that owner whole. A container that mixes owners is still split, one
//! operation at a time.

use timely::communication::Push;
use timely::dataflow::channels::pact::DistributorPact;
use timely::dataflow::channels::pushers::exchange::Distributor;
use timely::dataflow::channels::{Message, Stamp};

use crate::dataflow::process::KeyedOp;

/// The worker that owns the record `id`, of `peers` workers.
pub fn owner(id: u64, peers: usize) -> usize {
    (id % peers as u64) as usize
}

/// A worker's operations of one source batch, one vector per owning worker.
#[derive(Debug)]
pub struct OpsByOwner {
    ops: Vec<Vec<KeyedOp>>,
    /// The vector the last operation went to.
    last: usize,
}

impl OpsByOwner {
    /// Vectors for `peers` owners, sized for `expected` operations in all, spread evenly (a
    /// vector that grows copies every operation in it again).
    pub fn new(peers: usize, expected: usize) -> OpsByOwner {
        let peers = peers.max(1);
        let each = match peers {
            1 => expected,
            // A quarter more than an even share, and a little more for small batches.
            _ => expected / peers + expected / (4 * peers) + 16,
        };
        OpsByOwner {
            ops: (0..peers).map(|_| Vec::with_capacity(each)).collect(),
            last: 0,
        }
    }

    /// Adds an operation to its owner's vector.
    #[inline(always)]
    pub fn push(&mut self, op: KeyedOp) {
        self.last = match self.ops.len() {
            1 => 0,
            peers => owner(op.id, peers),
        };
        self.ops[self.last].push(op);
    }

    /// The operation added last.
    pub fn last_mut(&mut self) -> Option<&mut KeyedOp> {
        self.ops[self.last].last_mut()
    }

    /// Each owner's vector that holds operations (emptied by whoever takes them).
    pub fn non_empty(&mut self) -> impl Iterator<Item = &mut Vec<KeyedOp>> {
        self.ops.iter_mut().filter(|ops| !ops.is_empty())
    }
}

impl IntoIterator for OpsByOwner {
    type Item = KeyedOp;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<KeyedOp>>>;

    /// Every operation, owner by owner.
    fn into_iter(self) -> Self::IntoIter {
        self.ops.into_iter().flatten()
    }
}

/// The pact that takes each operation to the worker owning its id, moving single-owner
/// containers whole.
pub fn by_owner() -> DistributorPact<impl FnOnce(usize) -> OwnerDistributor> {
    DistributorPact(|peers| OwnerDistributor {
        split: (0..peers).map(|_| Vec::new()).collect(),
    })
}

/// Sends a single-owner container whole to its owner; splits any other container.
pub struct OwnerDistributor {
    /// Per owner, the operations of a mixed container (empty between calls).
    split: Vec<Vec<KeyedOp>>,
}

impl Distributor<Vec<KeyedOp>> for OwnerDistributor {
    fn partition<T: Clone, P: Push<Message<T, Vec<KeyedOp>>>>(
        &mut self,
        container: &mut Vec<KeyedOp>,
        stamp: &Stamp<T>,
        pushers: &mut [P],
    ) {
        let peers = pushers.len();
        let Some(first) = container.first() else {
            return;
        };
        let first_owner = owner(first.id, peers);
        if container
            .iter()
            .all(|op| owner(op.id, peers) == first_owner)
        {
            Message::push_at(container, stamp.clone(), &mut pushers[first_owner]);
            // What comes back, if anything, is a container to reuse, not operations to send.
            container.clear();
            return;
        }
        for op in container.drain(..) {
            self.split[owner(op.id, peers)].push(op);
        }
        for (ops, pusher) in self.split.iter_mut().zip(pushers.iter_mut()) {
            if !ops.is_empty() {
                Message::push_at(ops, stamp.clone(), pusher);
                ops.clear();
            }
        }
    }

    /// Nothing is held between calls.
    fn flush<T: Clone, P: Push<Message<T, Vec<KeyedOp>>>>(
        &mut self,
        _stamp: &Stamp<T>,
        _pushers: &mut [P],
    ) {
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::process::{DeleteEvent, EventStamp, RecordOp};

    fn op(id: u64) -> KeyedOp {
        KeyedOp {
            id,
            write: true,
            op: RecordOp::Delete(DeleteEvent {
                stamp: EventStamp {
                    timestamp: 1,
                    event_id: "e".into(),
                },
                wrong_id: id.to_string().into(),
            }),
        }
    }

    /// A worker's end of a channel: the containers pushed to it.
    #[derive(Default)]
    struct Received(Vec<Vec<KeyedOp>>);

    impl Push<Message<u64, Vec<KeyedOp>>> for Received {
        fn push(&mut self, message: &mut Option<Message<u64, Vec<KeyedOp>>>) {
            if let Some(message) = message.take() {
                self.0.push(message.data);
            }
        }
    }

    fn ids(containers: &[Vec<KeyedOp>]) -> Vec<Vec<u64>> {
        containers
            .iter()
            .map(|ops| ops.iter().map(|op| op.id).collect())
            .collect()
    }

    #[test]
    fn each_operation_reaches_its_owner_once_and_single_owner_containers_go_whole() {
        let mut distributor = (by_owner().0)(3);
        let mut workers: Vec<Received> = (0..3).map(|_| Received::default()).collect();
        let stamp = Stamp::from_elem(0u64);

        let mut sorted = OpsByOwner::new(3, 8);
        for id in [4, 7, 5, 1, 10] {
            sorted.push(op(id));
        }
        for container in sorted.non_empty() {
            distributor.partition(container, &stamp, &mut workers);
            assert!(container.is_empty(), "nothing is left to send twice");
        }
        let mut mixed: Vec<KeyedOp> = [2, 3, 6, 8, 9].into_iter().map(op).collect();
        distributor.partition(&mut mixed, &stamp, &mut workers);
        assert!(mixed.is_empty());

        // The sorted containers arrive as they were sent (owner 1's in one piece); the mixed
        // one is split by owner.
        assert_eq!(ids(&workers[0].0), vec![vec![3, 6, 9]]);
        assert_eq!(ids(&workers[1].0), vec![vec![4, 7, 1, 10]]);
        assert_eq!(ids(&workers[2].0), vec![vec![5], vec![2, 8]]);
    }
}
