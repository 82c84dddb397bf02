//! What every task of the collector shares: the current configuration (re-read when the
//! `config` table changes), the collector's identity, the Kick clients, the stager, metrics and
//! health, the supervisor, and the control database connection.

use std::sync::Arc;
use std::time::Duration;

use kick_shared::config::Config;
use kick_shared::db::{self, DbError};
use kick_shared::health::Health;
use kick_shared::kick::api::ApiClient;
use kick_shared::supervise::Supervisor;
use tokio::sync::watch;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::leases::Leases;
use crate::metrics::CollectorMetrics;
use crate::realtime::regions::{RecheckHandle, Rechecks};
use crate::reconcile::ReconcileHandle;
use crate::stager::{StagerHandle, StagerStatus};
use kick_shared::kick::realtime::negotiate::Web;

/// Queries of the control connection answer within this, or the connection is dropped and the
/// caller sees [`DbError::Timeout`]: a hung database must not hang a loop.
pub const CONTROL_TIMEOUT: u64 = 5;

#[derive(Debug)]
pub struct Ctx {
    config: watch::Receiver<Arc<Config>>,
    pub collector_id: String,
    pub api: ApiClient,
    pub web: Web,
    pub stager: StagerHandle,
    pub stager_status: Arc<StagerStatus>,
    pub metrics: Arc<CollectorMetrics>,
    pub health: Arc<Health>,
    pub supervisor: Supervisor,
    pub shutdown: CancellationToken,
    pub reconcile: ReconcileHandle,
    /// The shard leases this collector holds.
    pub leases: Arc<Leases>,
    /// Asks `regions` to locate a channel again.
    pub regions: RecheckHandle,
    /// The queue behind `regions` (the task that reads it may restart).
    pub region_rechecks: Rechecks,
    /// The sockets the placement opened (so that a restarted placement can retire them).
    pub sockets: std::sync::Mutex<Vec<Arc<crate::realtime::socket::SocketShared>>>,
    db: tokio::sync::Mutex<Option<Arc<Client>>>,
    transport: std::sync::Mutex<&'static str>,
    /// Set after a Pusher endpoint answered 4001 (its app key is gone): negotiation then
    /// accepts only Centrifugo.
    pub pusher_dead: std::sync::atomic::AtomicBool,
}

/// The parts [`Ctx::new`] is built from.
#[derive(Debug)]
pub struct Parts {
    pub config: watch::Receiver<Arc<Config>>,
    pub collector_id: String,
    pub api: ApiClient,
    pub web: Web,
    pub stager: StagerHandle,
    pub stager_status: Arc<StagerStatus>,
    pub metrics: Arc<CollectorMetrics>,
    pub health: Arc<Health>,
    pub supervisor: Supervisor,
    pub shutdown: CancellationToken,
    pub reconcile: ReconcileHandle,
    pub leases: Arc<Leases>,
    pub regions: RecheckHandle,
    pub region_rechecks: Rechecks,
}

impl Ctx {
    pub fn new(p: Parts) -> Self {
        let transport = p.config.borrow().kick.transport.as_str();
        Ctx {
            config: p.config,
            collector_id: p.collector_id,
            api: p.api,
            web: p.web,
            stager: p.stager,
            stager_status: p.stager_status,
            metrics: p.metrics,
            health: p.health,
            supervisor: p.supervisor,
            shutdown: p.shutdown,
            reconcile: p.reconcile,
            leases: p.leases,
            regions: p.regions,
            region_rechecks: p.region_rechecks,
            sockets: std::sync::Mutex::new(Vec::new()),
            db: tokio::sync::Mutex::new(None),
            transport: std::sync::Mutex::new(transport),
            pusher_dead: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The current configuration.
    pub fn cfg(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// A receiver that sees configuration changes.
    pub fn config_changes(&self) -> watch::Receiver<Arc<Config>> {
        self.config.clone()
    }

    /// The control connection (reads, heartbeats, gap records), reopened when it was lost.
    pub async fn db(&self) -> Result<Arc<Client>, DbError> {
        let mut slot = self.db.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let cfg = self.cfg();
        let c = match tokio::time::timeout(
            Duration::from_secs(CONTROL_TIMEOUT * 2),
            db::connect(&cfg.database),
        )
        .await
        {
            Ok(c) => Arc::new(c?),
            Err(_) => return Err(DbError::Timeout(CONTROL_TIMEOUT * 2)),
        };
        db::bounded(
            CONTROL_TIMEOUT,
            c.batch_execute(
                "SET application_name = 'kick-collector'; SET statement_timeout = '5s';
                 SET idle_in_transaction_session_timeout = '30s'",
            ),
        )
        .await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets the control connection (after a timeout: it may be stuck behind a hung server).
    pub async fn drop_db(&self) {
        *self.db.lock().await = None;
    }

    /// Runs a query on the control connection within [`CONTROL_TIMEOUT`]; a timeout drops the
    /// connection.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        let c = self.db().await?;
        let r = db::bounded(CONTROL_TIMEOUT, c.query(sql, params)).await;
        if matches!(r, Err(DbError::Timeout(_))) {
            self.drop_db().await;
        }
        r
    }

    pub fn set_transport(&self, t: &'static str) {
        *self.transport.lock().unwrap() = t;
    }

    pub fn transport(&self) -> &'static str {
        *self.transport.lock().unwrap()
    }
}
