//! `storage.backend = "nginx"`: artifacts on an nginx file server, a third-party backend written
//! against the public SDK only. The controller writes with WebDAV `PUT`/`DELETE` (nginx's `dav_methods`), lists with nginx's
//! JSON autoindex, and consumers download straight from nginx (sendfile, a CDN in front), so the
//! controller serves nothing and every replica sees the same store. nginx keeps no metadata, so
//! each object's sha256 lives beside it in `<key>~sha256` (`~` never occurs in a key).

use std::time::{Duration, SystemTime};

use externalsource_core::backend::{EnvVar, HttpUrl, Secret, TimeSpan};
use externalsource_core::storage::check_range;
use externalsource_core::{
    Backend, BuildError, ByteRange, Bytes, Capabilities, Digest, ObjectBody, ObjectKey, ObjectMeta, ObjectSummary,
    OpenContext, StorageError,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};

externalsource_core::register_backend!(Nginx);

/// `[storage.nginx]`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NginxSettings {
    /// Required: the location the controller writes to (`dav_methods PUT DELETE; autoindex_format json;`).
    pub url: HttpUrl,
    /// Where consumers download from, when not `url` (a CDN, a read-only server name).
    pub public_url: Option<HttpUrl>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Per request, up to the whole body; 30s when unset.
    pub timeout: Option<TimeSpan>,
}

/// Objects on an nginx server.
pub struct Nginx {
    http: reqwest::Client,
    settings: NginxSettings,
    url: String,
}

impl Nginx {
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}/{path}", self.url));
        match &self.settings.username {
            Some(user) => request.basic_auth(user, self.settings.password.as_ref().map(|p| p.expose())),
            None => request,
        }
    }

    /// Sends, and maps what is not a success to the error a caller can act on.
    async fn send(&self, op: &'static str, key: &str, request: RequestBuilder) -> Result<Response, StorageError> {
        let unavailable = |message: String| StorageError::Unavailable { operation: op, key: key.into(), message };
        let response = request.send().await.map_err(|e| unavailable(e.to_string()))?;
        let message = format!("nginx answered {}", response.status());
        match response.status() {
            s if s.is_success() => Ok(response),
            // 301: a directory (nginx adds the slash), and a directory is no object. A directory
            // path is no key either: its 404 comes back as InvalidKey.
            StatusCode::NOT_FOUND | StatusCode::MOVED_PERMANENTLY => {
                Err(ObjectKey::parse(key).map_or_else(StorageError::from, StorageError::NotFound))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(StorageError::AccessDenied { key: key.into(), message })
            }
            StatusCode::INSUFFICIENT_STORAGE | StatusCode::PAYLOAD_TOO_LARGE => {
                Err(StorageError::NoSpace { operation: op, key: key.into(), message })
            }
            _ => Err(unavailable(message)),
        }
    }

    /// Every file under the directory `dir` (`""` or ending in `/`), depth first.
    async fn walk(&self, dir: String, prefix: &str, out: &mut Vec<ObjectSummary>) -> Result<(), StorageError> {
        #[derive(serde::Deserialize)]
        struct Entry {
            name: String,
            #[serde(rename = "type")]
            kind: String,
            mtime: String,
            size: Option<u64>,
        }
        let body = match self.send("list", &dir, self.request(Method::GET, &dir)).await {
            Ok(response) => response.bytes().await.map_err(|e| io("list", &dir, e))?,
            Err(StorageError::NotFound(_) | StorageError::InvalidKey(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let entries: Vec<Entry> = serde_json::from_slice(&body).map_err(|e| io("list", &dir, e))?;
        for entry in entries.into_iter().filter(|e| !e.name.contains('~')) {
            let path = format!("{dir}{}", entry.name);
            if entry.kind == "directory" && (prefix.starts_with(&path) || path.starts_with(prefix)) {
                Box::pin(self.walk(format!("{path}/"), prefix, out)).await?;
            } else if let (true, Ok(key)) = (entry.kind == "file" && path.starts_with(prefix), ObjectKey::parse(&path))
            {
                let last_modified = httpdate::parse_http_date(&entry.mtime).unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(ObjectSummary { key, size: entry.size.unwrap_or(0), last_modified });
            }
        }
        Ok(())
    }
}

fn io(operation: &'static str, key: &str, e: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    StorageError::Io { operation, key: key.into(), source: std::io::Error::other(e) }
}

impl Backend for Nginx {
    const NAME: &'static str = "nginx";
    const CAPABILITIES: Capabilities = Capabilities { serves_http: false, shared: true };
    const ENV: &'static [EnvVar] = &[
        EnvVar::text("NGINX_URL", "url"),
        EnvVar::text("NGINX_USERNAME", "username"),
        EnvVar::text("NGINX_PASSWORD", "password"),
    ];
    type Settings = NginxSettings;

    async fn open(settings: &NginxSettings, _: &OpenContext) -> Result<Self, BuildError> {
        let url = settings.url.to_string();
        let timeout = settings.timeout.map_or(Duration::from_secs(30), |t| t.0);
        let http = reqwest::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::none());
        let http = http.build().map_err(|e| io("open", "", e))?;
        Ok(Self { http, settings: settings.clone(), url })
    }

    async fn put(&self, key: &ObjectKey, body: Bytes, digest: &Digest) -> Result<(), StorageError> {
        // An explicit length: nginx refuses a PUT without one, even an empty one.
        let put = self.request(Method::PUT, key.as_str()).header(header::CONTENT_LENGTH, body.len()).body(body);
        self.send("put", key.as_str(), put).await?;
        let put_digest = self.request(Method::PUT, &format!("{key}~sha256")).body(digest.hex().to_owned());
        self.send("put", key.as_str(), put_digest).await.map(drop)
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<ObjectBody, StorageError> {
        let meta = self.stat(key).await?;
        let range = check_range(&meta, range)?;
        let mut request = self.request(Method::GET, key.as_str());
        if let Some(r) = &range {
            request = request.header(header::RANGE, format!("bytes={}-{}", r.start(), r.end()));
        }
        let response = self.send("get", key.as_str(), request).await?;
        let chunks = futures::stream::unfold(response, |mut r| async move {
            r.chunk().await.map_err(std::io::Error::other).transpose().map(|chunk| (chunk, r))
        });
        Ok(ObjectBody { meta, range, stream: Box::pin(chunks) })
    }

    async fn stat(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        let head = self.send("stat", key.as_str(), self.request(Method::HEAD, key.as_str())).await?;
        let header = |name| head.headers().get(name).and_then(|v| v.to_str().ok());
        let size = header(header::CONTENT_LENGTH).and_then(|v| v.parse().ok()).unwrap_or(0);
        let last_modified = header(header::LAST_MODIFIED).and_then(|v| httpdate::parse_http_date(v).ok());
        let last_modified = last_modified.unwrap_or(SystemTime::UNIX_EPOCH);
        let sidecar = self.send("stat", key.as_str(), self.request(Method::GET, &format!("{key}~sha256"))).await?;
        let hex = sidecar.text().await.map_err(|e| io("stat", key.as_str(), e))?;
        let digest = Digest::parse(&format!("sha256:{}", hex.trim()))
            .ok_or_else(|| StorageError::Corrupt { key: key.clone(), message: format!("digest file holds {hex:?}") })?;
        Ok(ObjectMeta { key: key.clone(), size, digest, last_modified })
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        for path in [key.to_string(), format!("{key}~sha256")] {
            match self.send("delete", key.as_str(), self.request(Method::DELETE, &path)).await {
                Ok(_) | Err(StorageError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectSummary>, StorageError> {
        let mut out = Vec::new();
        self.walk(String::new(), prefix, &mut out).await?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn direct_url(&self, key: &ObjectKey) -> String {
        format!("{}/{key}", self.settings.public_url.as_ref().map_or(self.url.as_str(), HttpUrl::as_str))
    }
}
