//! Role-based access control, enforced in one place (DESIGN.md §8).
//!
//! [`ROUTES`] gives every route's [`Access`]; [`enforce`] runs before every handler, looks
//! the matched route up and refuses the request unless the caller's role reaches that level.
//! A route missing from the table is refused for everyone (fail closed). What depends on the
//! object (a user may stop only their own tasks) is decided by the helpers below, called by
//! the handlers once they have the object; another tenant's object is never found at all,
//! because every query is scoped by the caller's tenant.
//!
//! | role | may |
//! |---|---|
//! | viewer | read their tenant |
//! | user | also create, stop and delete their own tasks and volumes |
//! | admin | also manage the tenant's users, webhooks and all its tasks |
//! | platform admin (an admin of the `system` tenant) | also manage tenants, quotas and policies |

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// The level a route requires; each level includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// No token needed.
    Public,
    /// Any authenticated caller, viewers included.
    Read,
    /// Users and admins.
    Write,
    /// The tenant's admins.
    TenantAdmin,
    /// Admins of the system tenant.
    PlatformAdmin,
}

/// Every route of the API and the level it requires.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Access::Public),
    ("GET", "/readyz", Access::Public),
    // Like the health checks, for the scraper; keep it off the public network.
    ("GET", "/metrics", Access::Public),
    ("POST", "/v1/auth/login", Access::Public),
    ("POST", "/v1/auth/refresh", Access::Public),
    ("POST", "/v1/auth/logout", Access::Read),
    ("GET", "/v1/me", Access::Read),
    ("POST", "/v1/tasks", Access::Write),
    ("POST", "/v1/tasks:batch", Access::Write),
    ("GET", "/v1/tasks", Access::Read),
    ("GET", "/v1/tasks/{id}", Access::Read),
    ("DELETE", "/v1/tasks/{id}", Access::Write),
    ("POST", "/v1/tasks/{id}/stop", Access::Write),
    ("POST", "/v1/tasks/{id}/retry", Access::Write),
    ("GET", "/v1/dead-letters", Access::Read),
    ("GET", "/v1/tasks/{id}/executions", Access::Read),
    ("GET", "/v1/tasks/{id}/logs", Access::Read),
    ("GET", "/v1/events", Access::Read),
    ("POST", "/v1/volumes", Access::Write),
    ("GET", "/v1/volumes", Access::Read),
    ("GET", "/v1/volumes/{id}", Access::Read),
    ("DELETE", "/v1/volumes/{id}", Access::Write),
    ("POST", "/v1/tenants", Access::PlatformAdmin),
    ("GET", "/v1/tenants", Access::PlatformAdmin),
    ("GET", "/v1/tenants/{id}", Access::PlatformAdmin),
    ("PATCH", "/v1/tenants/{id}", Access::PlatformAdmin),
    ("DELETE", "/v1/tenants/{id}", Access::PlatformAdmin),
    ("GET", "/v1/tenants/{id}/quotas", Access::PlatformAdmin),
    ("PUT", "/v1/tenants/{id}/quotas", Access::PlatformAdmin),
    ("POST", "/v1/users", Access::TenantAdmin),
    ("GET", "/v1/users", Access::TenantAdmin),
    ("GET", "/v1/users/{id}", Access::TenantAdmin),
    ("PATCH", "/v1/users/{id}", Access::TenantAdmin),
    ("DELETE", "/v1/users/{id}", Access::TenantAdmin),
    // Admins only, the list included: a hook's URL may carry a token (see webhooks.rs).
    ("POST", "/v1/webhooks", Access::TenantAdmin),
    ("GET", "/v1/webhooks", Access::TenantAdmin),
    ("DELETE", "/v1/webhooks/{id}", Access::TenantAdmin),
    ("GET", "/v1/webhooks/{id}/deliveries", Access::TenantAdmin),
    ("GET", "/v1/admin/policy", Access::PlatformAdmin),
];

/// The level `method path` requires, if the route is known.
pub fn access_of(method: &str, path: &str) -> Option<Access> {
    ROUTES.iter().find(|(m, p, _)| *m == method && *p == path).map(|r| r.2)
}

impl Caller {
    /// The highest level this caller reaches.
    pub fn level(&self) -> Access {
        match self.role.as_str() {
            "admin" if self.platform_admin => Access::PlatformAdmin,
            "admin" => Access::TenantAdmin,
            "user" => Access::Write,
            _ => Access::Read,
        }
    }

    /// Whether the caller may stop or delete a task of its tenant owned by `owner`.
    pub fn may_manage_task(&self, owner: Uuid) -> bool {
        self.level() >= Access::TenantAdmin || (self.level() >= Access::Write && self.user_id == owner)
    }

    /// Whether the caller may act on users of tenant `tenant`.
    pub fn may_manage_users_of(&self, tenant: Uuid) -> bool {
        self.level() == Access::PlatformAdmin || (self.level() >= Access::TenantAdmin && self.tenant_id == tenant)
    }
}

/// The middleware: authenticates the caller of every non-public route, checks its level, and
/// leaves the [`Caller`] in the request for the handler.
pub async fn enforce(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let Some(path) = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()) else {
        return next.run(req).await;
    };
    let Some(access) = access_of(&method, &path) else {
        tracing::error!(%method, %path, "route has no access policy; refusing");
        return ApiError::Forbidden.into_response();
    };
    if access == Access::Public {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let mut caller = match Caller::authenticate(&parts, &state) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    // The token says who; PostgreSQL says what they may do now: a suspension or a demotion
    // takes effect at once, not when the token expires. One primary-key read per request.
    let current: Result<Option<(String, String, String)>, sqlx::Error> = sqlx::query_as(
        "select u.role, u.status, t.status from users u join tenants t on t.id = u.tenant_id where u.id = $1 and t.id = $2",
    )
    .bind(caller.user_id)
    .bind(caller.tenant_id)
    .fetch_optional(&state.pool)
    .await;
    match current {
        Err(e) => return ApiError::Database(e).into_response(),
        Ok(None) => return ApiError::Unauthorized("the token's user no longer exists".into()).into_response(),
        Ok(Some((_, _, tenant))) if tenant != "active" => {
            return ApiError::Suspended(format!("tenant {} is {tenant}", caller.tenant)).into_response();
        }
        Ok(Some((_, user, _))) if user != "active" => {
            return ApiError::Suspended(format!("your account is {user}")).into_response();
        }
        Ok(Some((role, _, _))) => {
            caller.platform_admin = crate::auth::is_platform_admin(&role, &caller.tenant, &state);
            caller.role = role;
        }
    }
    if caller.level() < access {
        return ApiError::Forbidden.into_response();
    }
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: &str, platform_admin: bool) -> Caller {
        Caller {
            user_id: Uuid::from_u128(1),
            tenant_id: Uuid::from_u128(7),
            tenant: "t".into(),
            role: role.into(),
            platform_admin,
            expires_at: i64::MAX,
        }
    }

    #[test]
    fn levels_follow_roles() {
        assert_eq!(caller("viewer", false).level(), Access::Read);
        assert_eq!(caller("user", false).level(), Access::Write);
        assert_eq!(caller("admin", false).level(), Access::TenantAdmin);
        assert_eq!(caller("admin", true).level(), Access::PlatformAdmin);
        // A platform flag on a non-admin grants nothing extra.
        assert_eq!(caller("user", true).level(), Access::Write);
        assert_eq!(caller("root", false).level(), Access::Read, "an unknown role reads at most");
    }

    #[test]
    fn users_manage_their_own_tasks_and_admins_all() {
        let (mine, theirs) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert!(caller("user", false).may_manage_task(mine));
        assert!(!caller("user", false).may_manage_task(theirs));
        assert!(!caller("viewer", false).may_manage_task(mine));
        assert!(caller("admin", false).may_manage_task(theirs));
    }

    #[test]
    fn tenant_admins_manage_only_their_tenants_users() {
        assert!(caller("admin", false).may_manage_users_of(Uuid::from_u128(7)));
        assert!(!caller("admin", false).may_manage_users_of(Uuid::from_u128(8)));
        assert!(caller("admin", true).may_manage_users_of(Uuid::from_u128(8)));
        assert!(!caller("user", false).may_manage_users_of(Uuid::from_u128(7)));
    }

    #[test]
    fn every_route_appears_once() {
        for (i, (m, p, _)) in ROUTES.iter().enumerate() {
            assert!(!ROUTES[i + 1..].iter().any(|(m2, p2, _)| m2 == m && p2 == p), "{m} {p} twice");
        }
    }
}
