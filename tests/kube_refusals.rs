//! What the proxy refuses before the cluster, against the real API server of
//! tests/common/kube.rs: identities and credentials a client sends, tokens that are missing,
//! foreign, forged, expired or logged out, and paths, queries and bodies the API server could
//! read differently than the proxy checked them.

mod common;

use std::time::SystemTime;

use common::kube::cluster;
use common::kubectl::{answer, https, kube_token, ok, port, stand, text, Kubectl};
use serde_json::Value;

#[test]
fn client_sent_impersonation_and_credentials_never_reach_the_cluster() {
    let stand = stand();
    let alice = Kubectl::new(&stand, "alice", "devs");
    let grant = alice.request("payments-quick", "30m");
    let grant_id = grant["grant_id"].as_str().unwrap().to_owned();
    let token = kube_token(&alice.user, "test");
    let http = https(&stand);
    let base = format!("{}/k8s/test", stand.proxy.url);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        // Who the cluster thinks is asking, with every identity claim a client could add.
        let resp = http
            .post(format!("{base}/apis/authentication.k8s.io/v1/selfsubjectreviews"))
            .bearer_auth(&token)
            .header("Impersonate-User", "test-admin")
            .header("Impersonate-Group", "system:masters")
            .header("impersonate_group", "system:masters")
            .header("Impersonate-Extra-Jitgate-Grant", "grant-forged")
            .header("Impersonate-Uid", "uid-admin")
            .header("X-Remote-User", "test-admin")
            .header("X-Remote-Group", "system:masters")
            .json(&serde_json::json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let review: Value = resp.json().await.unwrap();
        let who = &review["status"]["userInfo"];
        assert_eq!(who["username"], "alice", "{review}");
        let groups: Vec<&str> = who["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|g| g.as_str())
            .collect();
        assert!(groups.contains(&"jit:view"), "{groups:?}");
        assert!(!groups.contains(&"system:masters"), "{groups:?}");
        assert_eq!(who["extra"]["jitgate-grant"], serde_json::json!([grant_id]), "{review}");

        // The same through a cluster where the proxy signs in with a client certificate.
        let viacert = kube_token(&alice.user, "viacert");
        let resp = http
            .post(format!(
                "{}/k8s/viacert/apis/authentication.k8s.io/v1/selfsubjectreviews",
                stand.proxy.url
            ))
            .bearer_auth(&viacert)
            .header("Impersonate-User", "test-admin")
            .json(&serde_json::json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview" }))
            .send()
            .await
            .unwrap();
        let review: Value = resp.json().await.unwrap();
        assert_eq!(review["status"]["userInfo"]["username"], "alice", "{review}");
        // The grant's first request on each cluster is in the audit log.
        let audit = stand.proxy.admin(&["audit", "export"], None).success().stdout;
        let firsts: Vec<String> = audit
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["action"] == "kube.first_request")
            .map(|e| e["target"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(firsts, ["test", "viacert"]);

        // An identity claim does not widen the grant either.
        let resp = http
            .get(format!("{base}/api/v1/namespaces/{}/secrets", stand.ns))
            .bearer_auth(&token)
            .header("Impersonate-Group", "system:masters")
            .send()
            .await
            .unwrap();
        let (code, message) = answer(resp).await;
        assert_eq!(code, 403);
        assert!(
            message.starts_with("jitgate: no active grant allows list secrets"),
            "{message}"
        );
    });
}

#[test]
fn missing_foreign_forged_expired_and_logged_out_tokens_are_refused() {
    let stand = stand();
    let alice = Kubectl::new(&stand, "alice", "devs");
    alice.request("payments-quick", "30m");
    let good = kube_token(&alice.user, "test");
    let staging = kube_token(&alice.user, "staging");
    let login = alice.user.token();
    let http = https(&stand);
    let pods = format!("{}/k8s/test/api/v1/namespaces/{}/pods", stand.proxy.url, stand.ns);

    // The same token again from the cache, while it has time left.
    assert_eq!(kube_token(&alice.user, "test"), good);
    let unknown = alice.user.run(&["kube-credential", "--cluster", "nope"], None);
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("no cluster \"nope\""), "{}", unknown.stderr);

    // A token with its expiry moved back, signed with the proxy's own key: still expired.
    let parts: Vec<&str> = good.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    let key = std::fs::read(stand.proxy.dir.join("certs/token-signing-key.pem")).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = header["kid"].as_str().map(str::to_owned);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    claims["iat"] = (now - 1200).into();
    claims["exp"] = (now - 300).into();
    let expired = jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_ec_pem(&key).unwrap()).unwrap();
    claims["exp"] = (now + 600).into();
    claims["sub"] = "lee".into();
    let forged = format!("{}.{}.{}", parts[0], b64.encode(claims.to_string()), parts[2]);

    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let get = |token: Option<String>| {
            let mut req = http.get(&pods);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            async move { answer(req.send().await.unwrap()).await }
        };
        assert_eq!(get(Some(good.clone())).await.0, 200);
        // A token for another cluster, even one just used (and so checked) there.
        let staging_pods = format!("{}/k8s/staging/api/v1/namespaces/{}/pods", stand.proxy.url, stand.ns);
        let (code, _) = answer(http.get(&staging_pods).bearer_auth(&staging).send().await.unwrap()).await;
        assert_eq!(code, 403, "staging's own token passes its check; no grant there");
        for (token, says) in [
            (
                None,
                "no proxy token; use the kubeconfig from `jitgate kubeconfig --cluster test`",
            ),
            (Some(staging.clone()), "this token is not for cluster \"test\""),
            (Some(login.clone()), "this token is not for cluster \"test\""),
            (Some(expired), "the token has expired"),
            (Some(forged), "the token's signature is invalid"),
            (Some("garbage".into()), "the token is malformed"),
        ] {
            let (code, message) = get(token).await;
            assert_eq!(code, 401, "{says}: {message}");
            assert!(message.contains(says), "{message}");
        }
        let (code, message) = answer(
            http.get(format!("{}/k8s/nope/api/v1/pods", stand.proxy.url))
                .bearer_auth(&good)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(code, 404);
        assert_eq!(
            message,
            "jitgate: no cluster \"nope\" here; `jitgate kubeconfig --cluster NAME` names the ones there are"
        );
    });

    // Logging out ends the kubectl credential minted from that login, unused or not.
    let fresh = {
        std::fs::remove_dir_all(alice.user.home.join("kube")).unwrap();
        kube_token(&alice.user, "test")
    };
    alice.user.run(&["logout"], None).success();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (code, message) = answer(http.get(&pods).bearer_auth(&fresh).send().await.unwrap()).await;
        assert_eq!(code, 401);
        assert!(message.contains("logged out"), "{message}");
    });
}

#[test]
fn an_api_server_that_is_down_gets_a_status_naming_the_cluster() {
    let stand = stand();
    let alice = Kubectl::new(&stand, "alice", "devs");
    alice.request("payments-quick", "30m");
    let token = kube_token(&alice.user, "down");
    let http = https(&stand);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pods = format!("{}/k8s/down/api/v1/namespaces/{}/pods", stand.proxy.url, stand.ns);
        for _ in 0..2 {
            let resp = http.get(&pods).bearer_auth(&token).send().await.unwrap();
            let (code, message) = answer(resp).await;
            assert_eq!(code, 502);
            assert!(
                message.starts_with("jitgate: cluster \"down\" did not answer through the proxy: cannot connect: "),
                "{message}"
            );
            assert!(message.contains("onnection refused"), "the cause is named: {message}");
        }
    });
    // The cluster beside it still answers.
    ok(&alice.run(&["get", "pods", "-n", &stand.ns, "-o", "name"]));
}

#[test]
fn ambiguous_paths_mismatched_namespaces_and_oversized_bodies_are_refused() {
    let stand = stand();
    let ns = stand.ns.clone();
    let alice = Kubectl::new(&stand, "alice", "devs");
    alice.request("payments-quick", "30m");
    alice.request("config-writer", "30m");
    let token = kube_token(&alice.user, "test");
    let port = port(&stand);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let ca = stand.proxy.ca.clone();
        let raw = |line: String, extra: &str, body: &[u8]| {
            let mut request = format!(
                "{line} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n{extra}\r\n"
            )
            .into_bytes();
            request.extend_from_slice(body);
            let ca = ca.clone();
            async move { common::raw_https(&ca, port, "127.0.0.1", &request).await }
        };
        let status = |response: &str| -> u16 { response.split_whitespace().nth(1).unwrap().parse().unwrap() };
        // The allowed spelling passes, each ambiguous one is refused before the cluster.
        let fine = raw(format!("GET /k8s/test/api/v1/namespaces/{ns}/pods"), "", b"").await;
        assert_eq!(status(&fine), 200, "{fine}");
        for (path, says) in [
            (format!("/k8s/test/api/v1/namespaces/{ns}%2F..%2Fkube-system/pods"), "an escaped character"),
            (format!("/k8s/test/api/v1/namespaces/{ns}%252Fx/pods"), "an escaped character"),
            (format!("/k8s/test/api/v1/namespaces/{ns}/../kube-system/pods"), "'..' path segments"),
            (format!("/k8s/test/api/v1/namespaces/{ns}//pods"), "empty"),
            (format!("/k8s/test/api/v1/namespaces/{ns}/pods?watch="), "empty watch parameter"),
            (format!("/k8s/test/api/v1/namespaces/{ns}/pods?watch=false&watch=true"), "given twice"),
            (format!("/k8s/test/api/v1/proxy/namespaces/{ns}/pods/web-1"), "legacy /proxy/ paths"),
        ] {
            let got = raw(format!("GET {path}"), "", b"").await;
            assert_eq!(status(&got), 400, "{path}: {got}");
            assert!(got.contains(says), "{path}: {got}");
            assert!(got.contains("\"kind\":\"Status\""), "{got}");
        }
        // A body that names another namespace than the path the grant was checked on.
        let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"kube-system"},"data":{"a":"b"}}"#;
        let got = raw(
            format!("POST /k8s/test/api/v1/namespaces/{ns}/configmaps"),
            &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", cm.len()),
            cm.as_bytes(),
        )
        .await;
        assert_eq!(status(&got), 400, "{got}");
        assert!(got.contains("is not the request's namespace"), "{got}");
        // Larger than the API server would take: refused by its declared length at once.
        let got = raw(
            format!("POST /k8s/test/api/v1/namespaces/{ns}/configmaps"),
            "Content-Type: application/json\r\nContent-Length: 4194304\r\n",
            b"",
        )
        .await;
        assert_eq!(status(&got), 413, "{got}");
        // And when the size is not declared, by what arrives.
        let big = vec![b' '; 4 << 20];
        let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
        chunked.extend_from_slice(&big);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let got = raw(
            format!("POST /k8s/test/api/v1/namespaces/{ns}/configmaps"),
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
            &chunked,
        )
        .await;
        assert_eq!(status(&got), 413, "{got}");
        // Paths beside the API are not served through the proxy.
        let got = raw("GET /k8s/test/metrics".into(), "", b"").await;
        assert_eq!(status(&got), 403, "{got}");
    });
    let cms = cluster().admin(&["get", "configmaps", "-n", "kube-system", "-o", "name"]);
    assert!(
        !text(&cms.stdout).contains("configmap/x"),
        "nothing was created elsewhere"
    );
}
