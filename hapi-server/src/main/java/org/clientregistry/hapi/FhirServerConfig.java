package org.clientregistry.hapi;

import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.interceptor.api.IInterceptorService;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.DaoRegistry;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.dao.tx.IHapiTransactionService;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.narrative2.NullNarrativeGenerator;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.ETagSupportEnum;
import ca.uhn.fhir.rest.server.HardcodedServerAddressStrategy;
import ca.uhn.fhir.rest.server.IncomingRequestAddressStrategy;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.interceptor.LoggingInterceptor;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import java.util.ArrayList;
import java.util.List;
import javax.sql.DataSource;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;

/** The FHIR REST endpoint: HAPI's RestfulServer with the JPA resource providers. */
@Configuration
public class FhirServerConfig {

	@Bean
	public RestfulServer restfulServer(
			HapiProperties props,
			IFhirSystemDao<?, ?> systemDao,
			DaoRegistry daoRegistry,
			ResourceProviderFactory resourceProviderFactory,
			IJpaSystemProvider jpaSystemProvider,
			JpaStorageSettings storageSettings,
			ISearchParamRegistry searchParamRegistry,
			IValidationSupport validationSupport,
			DatabaseBackedPagingProvider pagingProvider,
			IHapiTransactionService transactions,
			DataSource dataSource,
			IInterceptorService storageInterceptors) {
		RestfulServer server = new RestfulServer(systemDao.getContext());
		storageInterceptors.registerInterceptor(
				new TrailReferencesDoNotBlockDeletes(props.getEnforceReferentialIntegrityOnDeleteDisableForPaths()));

		List<String> types = new ArrayList<>(props.getSupportedResourceTypes());
		if (!types.isEmpty()) {
			if (!types.contains("SearchParameter")) {
				types.add("SearchParameter");
			}
			daoRegistry.setSupportedResourceTypes(types);
		}
		// No generated narratives: smaller resources, faster writes.
		systemDao.getContext().setNarrativeGenerator(new NullNarrativeGenerator());

		server.registerProviders(resourceProviderFactory.createProviders());
		server.registerProvider(jpaSystemProvider);
		server.registerProvider(new TaggedVersionsProvider(daoRegistry, transactions, dataSource));
		server.registerProvider(new IdLookupsProvider());

		JpaCapabilityStatementProvider capabilities = new JpaCapabilityStatementProvider(
				server, systemDao, storageSettings, searchParamRegistry, validationSupport);
		capabilities.setImplementationDescription("Client registry HAPI FHIR R4 server");
		server.setServerConformanceProvider(capabilities);

		server.setPagingProvider(pagingProvider);
		server.setETagSupport(ETagSupportEnum.ENABLED);
		server.setDefaultResponseEncoding(EncodingEnum.JSON);
		server.setDefaultPrettyPrint(false);

		String address = props.getServerAddress();
		if (address != null && !address.isBlank()) {
			server.setServerAddressStrategy(new HardcodedServerAddressStrategy(address.trim()));
		} else {
			server.setServerAddressStrategy(new IncomingRequestAddressStrategy());
		}
		if (props.isRequestLogging()) {
			LoggingInterceptor logging = new LoggingInterceptor();
			logging.setLoggerName("fhir.access");
			logging.setMessageFormat(
					"${requestVerb} ${requestUrl} ${operationType} -> ${processingTimeMillis}ms");
			logging.setLogExceptions(true);
			server.registerInterceptor(logging);
		}
		return server;
	}
}
