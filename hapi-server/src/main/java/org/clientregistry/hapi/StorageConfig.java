package org.clientregistry.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.api.IDaoRegistry;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.binstore.DatabaseBinaryContentStorageSvcImpl;
import ca.uhn.fhir.jpa.config.HibernatePropertiesProvider;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.config.util.ResourceCountCacheUtil;
import ca.uhn.fhir.jpa.dao.FulltextSearchSvcImpl;
import ca.uhn.fhir.jpa.dao.IFulltextSearchSvc;
import ca.uhn.fhir.jpa.dao.search.HSearchSortHelperImpl;
import ca.uhn.fhir.jpa.dao.search.IHSearchSortHelper;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.entity.StorageSettings;
import ca.uhn.fhir.jpa.provider.DaoRegistryResourceSupportedSvc;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.search.IStaleSearchDeletingSvc;
import ca.uhn.fhir.jpa.search.StaleSearchDeletingSvcImpl;
import ca.uhn.fhir.jpa.util.ResourceCountCache;
import ca.uhn.fhir.rest.api.IResourceSupportedSvc;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import jakarta.persistence.EntityManagerFactory;
import java.sql.Connection;
import java.sql.SQLException;
import java.util.HashSet;
import java.util.Map;
import javax.sql.DataSource;
import org.hibernate.cfg.AvailableSettings;
import org.hibernate.dialect.Dialect;
import org.hibernate.engine.jdbc.dialect.internal.StandardDialectResolver;
import org.hibernate.engine.jdbc.dialect.spi.DatabaseMetaDataDialectResolutionInfoAdapter;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.boot.autoconfigure.orm.jpa.JpaProperties;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;
import org.springframework.transaction.annotation.EnableTransactionManagement;

/** Storage beans HAPI's JpaConfig expects the application to provide. */
@Configuration
@EnableTransactionManagement
public class StorageConfig {

	private static final Logger log = LoggerFactory.getLogger(StorageConfig.class);

	@Bean
	public JpaStorageSettings jpaStorageSettings(HapiProperties props) {
		JpaStorageSettings s = new JpaStorageSettings();
		// The registry reads its own writes at once: never answer a search from a cached result set.
		s.setReuseCachedSearchResultsForMillis(null);
		s.setResourceClientIdStrategy(props.getClientIdStrategy());
		s.setResourceServerIdStrategy(props.getServerIdStrategy());
		s.setExpungeEnabled(props.isExpungeEnabled());
		s.setDeleteExpungeEnabled(props.isExpungeEnabled());
		s.setAllowMultipleDelete(props.isAllowMultipleDelete());
		s.setEnforceReferentialIntegrityOnDelete(props.isEnforceReferentialIntegrityOnDelete());
		// read by $delete-expunge only; a DELETE honours these paths through TrailReferencesDoNotBlockDeletes,
		// which has HAPI look at up to this many references to the record (the default, 60, could hide a
		// golden record's link behind a source record's AuditEvents)
		s.setEnforceReferentialIntegrityOnDeleteDisableForPaths(
				new HashSet<>(props.getEnforceReferentialIntegrityOnDeleteDisableForPaths()));
		s.setMaximumDeleteConflictQueryCount(10_000);
		s.setIndexMissingFields(StorageSettings.IndexEnabledEnum.DISABLED);
		s.setAutoCreatePlaceholderReferenceTargets(false);
		s.setAllowExternalReferences(false);
		// Hibernate Search / Lucene is off: no _text/_content, no full-text indexing.
		s.setAdvancedHSearchIndexing(false);
		s.setHibernateSearchIndexSearchParams(false);
		// A search with _count <= max page size is answered in one go from the database.
		s.setFetchSizeDefaultMaximum(props.getMaxPageSize());
		s.setTagStorageMode(props.getTagStorageMode());
		s.setInlineResourceTextBelowSize(props.getInlineResourceTextBelowSize());
		return s;
	}

	@Bean
	public SubscriptionSettings subscriptionSettings() {
		// Subscriptions are not wired in (no subscription configs imported); HAPI beans still ask for this.
		return new SubscriptionSettings();
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings(); // partitioning off
	}

	@Primary
	@Bean
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory beanFactory,
			FhirContext fhirContext,
			JpaStorageSettings storageSettings,
			JpaProperties jpaProperties,
			DataSource dataSource) {
		LocalContainerEntityManagerFactoryBean emf =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
		Map<String, String> p = jpaProperties.getProperties();
		p.putIfAbsent(AvailableSettings.SCANNER, "org.hibernate.boot.archive.scan.internal.DisabledScanner");
		p.putIfAbsent(
				AvailableSettings.IMPLICIT_NAMING_STRATEGY,
				"org.springframework.boot.orm.jpa.hibernate.SpringImplicitNamingStrategy");
		p.putIfAbsent(
				AvailableSettings.PHYSICAL_NAMING_STRATEGY,
				"org.hibernate.boot.model.naming.CamelCaseToUnderscoresNamingStrategy");
		p.putIfAbsent(AvailableSettings.HBM2DDL_AUTO, "update");
		p.putIfAbsent(AvailableSettings.STATEMENT_BATCH_SIZE, "20");
		p.putIfAbsent(AvailableSettings.USE_QUERY_CACHE, "false");
		p.putIfAbsent(AvailableSettings.USE_SECOND_LEVEL_CACHE, "false");
		p.putIfAbsent(AvailableSettings.USE_STRUCTURED_CACHE, "false");
		p.putIfAbsent(AvailableSettings.USE_MINIMAL_PUTS, "false");
		p.putIfAbsent(AvailableSettings.SHOW_SQL, "false");
		p.putIfAbsent("hibernate.search.enabled", "false");
		emf.setPersistenceUnitName("HAPI_PU");
		emf.setJpaPropertyMap(p);
		emf.setDataSource(dataSource);
		return emf;
	}

	@Primary
	@Bean
	public JpaTransactionManager transactionManager(EntityManagerFactory emf) {
		return new JpaTransactionManager(emf);
	}

	/** Tells HAPI which SQL dialect is in use: the configured hibernate.dialect, else detected from JDBC. */
	@Primary
	@Bean
	public HibernatePropertiesProvider hibernatePropertiesProvider(LocalContainerEntityManagerFactoryBean emf) {
		Dialect dialect = resolveDialect(emf);
		log.info("Hibernate dialect: {}", dialect.getClass().getName());
		return new HibernatePropertiesProvider() {
			@Override
			public Dialect getDialect() {
				return dialect;
			}
		};
	}

	private static Dialect resolveDialect(LocalContainerEntityManagerFactoryBean emf) {
		Object configured = emf.getJpaPropertyMap().get(AvailableSettings.DIALECT);
		if (configured != null && !configured.toString().isBlank()) {
			try {
				return (Dialect) Class.forName(configured.toString().trim())
						.getDeclaredConstructor()
						.newInstance();
			} catch (ReflectiveOperationException e) {
				throw new IllegalStateException("Cannot instantiate hibernate.dialect " + configured, e);
			}
		}
		DataSource ds = emf.getDataSource();
		try (Connection c = ds.getConnection()) {
			return new StandardDialectResolver()
					.resolveDialect(new DatabaseMetaDataDialectResolutionInfoAdapter(c.getMetaData()));
		} catch (SQLException e) {
			throw new IllegalStateException("Cannot detect the SQL dialect", e);
		}
	}

	@Bean
	public IFulltextSearchSvc fulltextSearchSvc() {
		return new FulltextSearchSvcImpl();
	}

	@Bean
	public IHSearchSortHelper hSearchSortHelper(ISearchParamRegistry searchParamRegistry) {
		return new HSearchSortHelperImpl(searchParamRegistry);
	}

	@Bean
	public IStaleSearchDeletingSvc staleSearchDeletingSvc() {
		return new StaleSearchDeletingSvcImpl();
	}

	@Bean
	public DatabaseBackedPagingProvider databaseBackedPagingProvider(HapiProperties props) {
		DatabaseBackedPagingProvider paging = new DatabaseBackedPagingProvider();
		paging.setDefaultPageSize(props.getDefaultPageSize());
		paging.setMaximumPageSize(props.getMaxPageSize());
		return paging;
	}

	@Bean
	public IResourceSupportedSvc resourceSupportedSvc(IDaoRegistry daoRegistry) {
		return new DaoRegistryResourceSupportedSvc(daoRegistry);
	}

	@Bean(name = "myResourceCountsCache")
	public ResourceCountCache resourceCountsCache(IFhirSystemDao<?, ?> systemDao) {
		return ResourceCountCacheUtil.newResourceCountCache(systemDao);
	}

	@Bean
	public DatabaseBinaryContentStorageSvcImpl binaryStorageSvc() {
		return new DatabaseBinaryContentStorageSvcImpl();
	}
}
