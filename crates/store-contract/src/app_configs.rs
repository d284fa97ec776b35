//! Launch and validation configuration of applications (`tern_core::service::apps`) run on a
//! given `Store` adapter.
//!
//! Both configurations and the validation outcomes are written into the application's item with
//! its version as condition. The scenario checks on every adapter that concurrent writers never
//! lose each other's changes (concurrent notifications of different validations all land, a
//! configuration written concurrently with an UpdateApp is never a mix), and that refused
//! requests leave nothing behind.

use std::sync::Arc;

use tern_core::enums::*;
use tern_core::model::Disk;
use tern_core::service::{
    AppUpdate, AppValidation, LaunchConfiguration, NewApp, NewServerGroup, NotificationContext,
    S3Location, ServerGroupLaunchConfiguration, ServerGroupValidation, ServerLaunchConfiguration,
    ServerValidation, SsmValidationParameters, UserData, UserDataValidationParameters,
    ValidationConfiguration,
};
use tern_core::service::{InventoryVm, NewConnector};
use tern_core::{Config, DomainError, Store};

use crate::apps::service_with_catalog;

fn server(id: &str, logical: Option<&str>) -> ServerLaunchConfiguration {
    ServerLaunchConfiguration {
        server_id: Some(id.into()),
        logical_id: logical.map(String::from),
        instance_type: Some("t3.small".into()),
        user_data: Some(UserData {
            s3_location: Some(S3Location::new("sms-app-scripts", format!("{id}.sh"))),
        }),
        ..Default::default()
    }
}

fn launch(groups: &[(&str, i64, Vec<ServerLaunchConfiguration>)]) -> LaunchConfiguration {
    LaunchConfiguration {
        role_name: Some("launcher".into()),
        auto_launch: true,
        server_groups: groups
            .iter()
            .map(|(g, order, servers)| ServerGroupLaunchConfiguration {
                server_group_id: Some(g.to_string()),
                launch_order: Some(*order),
                servers: servers.clone(),
            })
            .collect(),
    }
}

fn ssm(name: &str) -> AppValidation {
    AppValidation {
        validation_id: None,
        name: Some(name.into()),
        app_validation_strategy: Some(AppValidationStrategy::Ssm),
        ssm_validation_parameters: Some(SsmValidationParameters {
            source: Some(S3Location::new("sms-app-scripts", format!("{name}.sh"))),
            instance_id: Some("i-0123456789abcdef0".into()),
            script_type: Some(ScriptType::ShellScript),
            ..Default::default()
        }),
    }
}

/// Launch configuration, validation configuration and outcomes on `store`.
pub async fn use_cases(store: Arc<dyn Store>) {
    let (svc, s) = service_with_catalog(store, Config::default(), 4).await;
    let app = svc
        .create_app(NewApp {
            name: Some("configs".into()),
            server_groups: Some(vec![
                NewServerGroup {
                    name: Some("web".into()),
                    server_ids: vec![Some(s[0].clone()), Some(s[1].clone())],
                    ..Default::default()
                },
                NewServerGroup {
                    name: Some("db".into()),
                    server_ids: vec![Some(s[2].clone())],
                    ..Default::default()
                },
            ]),
            ..Default::default()
        })
        .await
        .expect("CreateApp");
    let id = app.summary.app_id.clone();
    let web = app.server_groups[0].server_group_id.clone();
    let db = app.server_groups[1].server_group_id.clone();

    // Launch configuration: stored as checked, read back by the application's groups.
    let config = launch(&[
        (&db, 1, vec![server(&s[2], Some("Db"))]),
        (
            &web,
            2,
            vec![server(&s[0], Some("Web0")), server(&s[1], None)],
        ),
    ]);
    svc.put_app_launch_configuration(&id, config.clone())
        .await
        .expect("PutAppLaunchConfiguration");
    let got = svc.get_app_launch_configuration(&id).await.expect("get");
    assert_eq!(got.role_name.as_deref(), Some("launcher"));
    assert_eq!(got.auto_launch, Some(true));
    assert_eq!(got.server_groups.len(), 2);
    assert_eq!(got.server_groups[0].server_group_id, db);
    assert_eq!(got.server_groups[0].launch_order, Some(1));
    assert_eq!(
        got.server_groups[1].servers[0].1,
        config.server_groups[1].servers[0]
    );
    assert_eq!(got.server_groups[1].servers[1].0.server_id, s[1]);
    let summary = svc.get_app(&id).await.unwrap().summary;
    assert_eq!(
        summary.launch_configuration_status,
        AppConfigurationStatus::Configured
    );
    assert_eq!(summary.launch_status, AppLaunchStatus::ReadyForLaunch);

    // A refused configuration (a server of no group of the application) changes nothing.
    let bad = launch(&[(&db, 1, vec![server(&s[3], None)])]);
    let e = svc
        .put_app_launch_configuration(&id, bad)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DomainError::InvalidParameter(m) if m.contains(&s[3])),
        "{e}"
    );
    assert_eq!(
        svc.get_app_launch_configuration(&id)
            .await
            .unwrap()
            .server_groups[1]
            .servers
            .len(),
        2
    );

    // Concurrent writers: two configurations and an UpdateApp that moves s[1] out. Each write
    // is conditional on the application's version, so the result is one whole configuration,
    // never a mix, and never names a server the application lost without dropping it on read.
    let a = launch(&[(&db, 5, vec![server(&s[2], Some("DbA"))])]);
    let b = launch(&[(&web, 7, vec![server(&s[0], Some("WebB"))])]);
    let (ra, rb, ru) = tokio::join!(
        svc.put_app_launch_configuration(&id, a.clone()),
        svc.put_app_launch_configuration(&id, b.clone()),
        svc.update_app(AppUpdate {
            app_id: id.clone(),
            server_groups: Some(vec![
                NewServerGroup {
                    server_group_id: Some(web.clone()),
                    name: Some("web".into()),
                    server_ids: vec![Some(s[0].clone())],
                },
                NewServerGroup {
                    server_group_id: Some(db.clone()),
                    name: Some("db".into()),
                    server_ids: vec![Some(s[2].clone())],
                },
            ]),
            ..Default::default()
        }),
    );
    ra.expect("put a");
    rb.expect("put b");
    ru.expect("update");
    let got = svc.get_app_launch_configuration(&id).await.unwrap();
    let orders: Vec<Option<i64>> = got.server_groups.iter().map(|g| g.launch_order).collect();
    assert!(
        orders == vec![Some(5)] || orders == vec![Some(7)],
        "one whole configuration: {orders:?}"
    );
    assert_eq!(svc.get_app(&id).await.unwrap().summary.total_servers, 2);

    svc.delete_app_launch_configuration(&id).await.unwrap();
    let summary = svc.get_app(&id).await.unwrap().summary;
    assert_eq!(
        summary.launch_configuration_status,
        AppConfigurationStatus::NotConfigured
    );
    assert_eq!(
        summary.launch_status,
        AppLaunchStatus::ReadyForConfiguration
    );

    // Validation: ids generated, outcomes recorded by concurrent notifications without loss.
    let names = ["alpha", "beta", "gamma", "delta"];
    svc.put_app_validation_configuration(
        &id,
        ValidationConfiguration {
            app_validations: names.iter().map(|n| ssm(n)).collect(),
            server_group_validations: vec![ServerGroupValidation {
                server_group_id: Some(web.clone()),
                servers: vec![ServerValidation {
                    server_id: Some(s[0].clone()),
                    validation_id: None,
                    name: Some("boot".into()),
                    server_validation_strategy: Some(ServerValidationStrategy::Userdata),
                    user_data_validation_parameters: Some(UserDataValidationParameters {
                        source: Some(S3Location::new("sms-app-scripts", "boot.sh")),
                        script_type: Some(ScriptType::ShellScript),
                    }),
                }],
            }],
        },
    )
    .await
    .expect("PutAppValidationConfiguration");
    let outputs = svc.get_app_validation_output(None, &id).await.unwrap();
    assert_eq!(outputs.len(), 5);
    assert!(outputs
        .iter()
        .all(|o| o.status == ValidationStatus::ReadyForValidation));
    assert_eq!(outputs[4].server.as_ref().unwrap().server_id, s[0]);
    let notes = outputs.iter().map(|o| {
        svc.notify_app_validation_output(
            &id,
            Some(NotificationContext {
                validation_id: Some(o.validation_id.clone()),
                status: Some(ValidationStatus::Succeeded),
                status_message: Some(format!("{} ok", o.name.as_deref().unwrap_or("?"))),
            }),
        )
    });
    for r in futures::future::join_all(notes).await {
        r.expect("notify");
    }
    let outputs = svc.get_app_validation_output(None, &id).await.unwrap();
    for o in &outputs {
        assert_eq!(o.status, ValidationStatus::Succeeded, "{o:?}");
        assert_eq!(
            o.status_message,
            Some(format!("{} ok", o.name.as_deref().unwrap()))
        );
        assert!(o.latest_validation_time.is_some());
    }
    svc.delete_app_validation_configuration(&id).await.unwrap();
    assert!(svc
        .get_app_validation_output(None, &id)
        .await
        .unwrap()
        .is_empty());
    svc.delete_app(&id, false, false).await.unwrap();

    // ImportAppCatalog: the catalog's applications, each made once by concurrent imports.
    let c2 = svc
        .register_connector(NewConnector {
            name: "import".into(),
            version: "1.0".into(),
            vm_manager_id: format!("vc-import-{}", uuid::Uuid::new_v4()),
            vm_manager_type: Some(VmManagerType::Vsphere),
            ..Default::default()
        })
        .await
        .expect("register");
    svc.import_catalog().await.expect("import");
    let work = svc.poll_work(&c2, 10).await.expect("poll");
    let req = work
        .iter()
        .find(|w| w.kind == WorkKind::Inventory)
        .expect("inventory work");
    let vms = (0..3)
        .map(|i| InventoryVm {
            vm_id: format!("imp-{i}"),
            vm_name: Some(format!("imp{i}")),
            disks: vec![Disk {
                path: format!("/disks/imp{i}.raw"),
                format: Some("raw".into()),
                size_bytes: Some(1 << 20),
            }],
            application: Some(if i < 2 { "erp" } else { "crm" }.into()),
            ..Default::default()
        })
        .collect();
    svc.report_inventory(&c2, Some(&req.work_id), vms)
        .await
        .expect("inventory");
    let (a, b) = tokio::join!(svc.import_app_catalog(None), svc.import_app_catalog(None));
    let (a, b) = (a.expect("import a"), b.expect("import b"));
    let mut made: Vec<String> = a.imported.iter().chain(&b.imported).cloned().collect();
    made.sort();
    made.dedup();
    let apps = svc.list_apps(None, None, None).await.unwrap().items;
    let mut imported: Vec<(String, u32)> = apps
        .iter()
        .filter_map(|a| a.imported_app_id.clone().map(|n| (n, a.total_servers)))
        .collect();
    imported.sort();
    assert_eq!(imported, [("crm".to_string(), 1), ("erp".to_string(), 2)]);
    assert_eq!(made.len(), 2, "{made:?}");
    let again = svc.import_app_catalog(None).await.unwrap();
    assert!(again.imported.is_empty());
    assert_eq!(again.already_imported, ["crm", "erp"]);
}
