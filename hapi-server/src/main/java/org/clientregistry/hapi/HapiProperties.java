package org.clientregistry.hapi;

import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import java.util.ArrayList;
import java.util.List;
import org.springframework.boot.context.properties.ConfigurationProperties;

/**
 * Settings under {@code hapi.*} in application.yaml. Each one can be overridden by an environment
 * variable through Spring's relaxed binding, e.g. {@code hapi.max-page-size} by {@code HAPI_MAX_PAGE_SIZE}.
 */
@ConfigurationProperties(prefix = "hapi")
public class HapiProperties {

	/** Fixed base URL written into Location headers and Bundle links; empty = derive from the request. */
	private String serverAddress = "";

	/** Page size when the client sends no _count. */
	private int defaultPageSize = 20;

	/** Largest _count honoured (larger values are clamped to this). */
	private int maxPageSize = 1000;

	/** Resource types served; empty = all R4 types. */
	private List<String> supportedResourceTypes = new ArrayList<>();

	/** Allow DELETE and $expunge / _expunge. */
	private boolean expungeEnabled = true;

	/** Refuse deleting a resource that other resources still reference (HTTP 409). */
	private boolean enforceReferentialIntegrityOnDelete = true;

	/** Allow a conditional DELETE (e.g. DELETE Patient?_tag=...) to remove more than one resource. */
	private boolean allowMultipleDelete = true;

	/** Id strategy for server-assigned ids (POST): SEQUENTIAL_NUMERIC or UUID. */
	private JpaStorageSettings.IdStrategyEnum serverIdStrategy = JpaStorageSettings.IdStrategyEnum.SEQUENTIAL_NUMERIC;

	/** Client-assigned ids (PUT to a new id): ALPHANUMERIC (ids must contain a letter), ANY, or NOT_ALLOWED. */
	private JpaStorageSettings.ClientIdStrategyEnum clientIdStrategy =
			JpaStorageSettings.ClientIdStrategyEnum.ALPHANUMERIC;

	/** Log one line per request. */
	private boolean requestLogging = false;

	/**
	 * How meta.tag is stored. INLINE (default): in the resource body, searched through a {@code _tag} token
	 * SearchParameter the server defines at startup, no tag tables and no tag definition rows (HAPI writes
	 * records with several unique tags about twice as fast); VERSIONED / NON_VERSIONED: HAPI's tag tables.
	 * Fixed for the life of a database: the server refuses INLINE on a database that already holds tag
	 * definitions.
	 */
	private JpaStorageSettings.TagStorageModeEnum tagStorageMode = JpaStorageSettings.TagStorageModeEnum.INLINE;

	/** Resource bodies shorter than this many characters are stored in the version row, not a LOB. */
	private int inlineResourceTextBelowSize = 4000;

	public String getServerAddress() { return serverAddress; }
	public void setServerAddress(String v) { serverAddress = v; }
	public int getDefaultPageSize() { return defaultPageSize; }
	public void setDefaultPageSize(int v) { defaultPageSize = v; }
	public int getMaxPageSize() { return maxPageSize; }
	public void setMaxPageSize(int v) { maxPageSize = v; }
	public List<String> getSupportedResourceTypes() { return supportedResourceTypes; }
	public void setSupportedResourceTypes(List<String> v) { supportedResourceTypes = v; }
	public boolean isExpungeEnabled() { return expungeEnabled; }
	public void setExpungeEnabled(boolean v) { expungeEnabled = v; }
	public boolean isEnforceReferentialIntegrityOnDelete() { return enforceReferentialIntegrityOnDelete; }
	public void setEnforceReferentialIntegrityOnDelete(boolean v) { enforceReferentialIntegrityOnDelete = v; }
	public boolean isAllowMultipleDelete() { return allowMultipleDelete; }
	public void setAllowMultipleDelete(boolean v) { allowMultipleDelete = v; }
	public JpaStorageSettings.IdStrategyEnum getServerIdStrategy() { return serverIdStrategy; }
	public void setServerIdStrategy(JpaStorageSettings.IdStrategyEnum v) { serverIdStrategy = v; }
	public JpaStorageSettings.ClientIdStrategyEnum getClientIdStrategy() { return clientIdStrategy; }
	public void setClientIdStrategy(JpaStorageSettings.ClientIdStrategyEnum v) { clientIdStrategy = v; }
	public JpaStorageSettings.TagStorageModeEnum getTagStorageMode() { return tagStorageMode; }
	public void setTagStorageMode(JpaStorageSettings.TagStorageModeEnum v) { tagStorageMode = v; }
	public int getInlineResourceTextBelowSize() { return inlineResourceTextBelowSize; }
	public void setInlineResourceTextBelowSize(int v) { inlineResourceTextBelowSize = v; }
	public boolean isRequestLogging() { return requestLogging; }
	public void setRequestLogging(boolean v) { requestLogging = v; }
}
