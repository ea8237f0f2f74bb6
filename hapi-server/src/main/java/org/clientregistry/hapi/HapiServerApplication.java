package org.clientregistry.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.rest.server.RestfulServer;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.quartz.QuartzAutoConfiguration;
import org.springframework.boot.autoconfigure.thymeleaf.ThymeleafAutoConfiguration;
import org.springframework.boot.context.properties.EnableConfigurationProperties;
import org.springframework.boot.web.servlet.FilterRegistrationBean;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Import;

/**
 * Minimal HAPI FHIR R4 JPA server.
 *
 * <p>Spring wiring follows what hapi-fhir-jpaserver-starter does for R4, minus MDM, subscriptions,
 * clinical reasoning, IPS and the web test page: HAPI's own {@link JpaR4Config} (DAOs, resource
 * providers, search, storage), Batch2 (used by delete-expunge / reindex) with its in-memory broker, and our two
 * small configuration classes.
 */
@SpringBootApplication(exclude = {ThymeleafAutoConfiguration.class, QuartzAutoConfiguration.class})
@EnableConfigurationProperties(HapiProperties.class)
@Import({
	ThreadPoolFactoryConfig.class,
	JpaR4Config.class,
	JpaBatch2Config.class,
	Batch2JobsConfig.class,
	// in-process message broker (LinkedBlockingQueue) that Batch2 sends its work notifications over;
	// no subscription matching/delivery is configured
	SubscriptionChannelConfig.class,
	StorageConfig.class,
	FhirServerConfig.class
})
public class HapiServerApplication {

	public static void main(String[] args) {
		SpringApplication.run(HapiServerApplication.class, args);
	}

	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServletRegistration(RestfulServer restfulServer) {
		ServletRegistrationBean<RestfulServer> registration =
				new ServletRegistrationBean<>(restfulServer, "/fhir/*");
		registration.setName("fhirServlet");
		registration.setLoadOnStartup(1);
		return registration;
	}

	@Bean
	public FilterRegistrationBean<WholeResponseFilter> wholeResponses() {
		FilterRegistrationBean<WholeResponseFilter> registration =
				new FilterRegistrationBean<>(new WholeResponseFilter());
		registration.addUrlPatterns("/fhir/*");
		return registration;
	}
}
