package org.clientregistry.hapi;

import ca.uhn.fhir.jpa.dao.index.IdHelperService;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.BeansException;
import org.springframework.beans.factory.config.BeanPostProcessor;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.core.env.Environment;

/**
 * Puts {@link OneByOneIdHelperService} in place of HAPI's {@link IdHelperService} when
 * {@code hapi.id-lookups-one-by-one} (env {@code HAPI_ID_LOOKUPS_ONE_BY_ONE}) says so: {@code auto} (the
 * default) on H2 only, where HAPI's one query for several ids scans the resource table; {@code true} always;
 * {@code false} never (HAPI's own). {@code GET /fhir/$id-lookups} tells which is in use and counts the lookups
 * it split ({@link IdLookupsProvider}).
 */
@Configuration
public class OneByOneIdLookupConfig {

	private static final Logger log = LoggerFactory.getLogger(OneByOneIdLookupConfig.class);
	static volatile boolean inUse = false;

	@Bean
	public static BeanPostProcessor oneByOneIdLookups(ConfigurableListableBeanFactory beans, Environment env) {
		return new BeanPostProcessor() {
			@Override
			public Object postProcessAfterInitialization(Object bean, String beanName) throws BeansException {
				if (bean.getClass() != IdHelperService.class) {
					return bean;
				}
				String setting = env.getProperty("hapi.id-lookups-one-by-one", "auto").trim().toLowerCase();
				String url = env.getProperty("spring.datasource.url", "");
				boolean wanted = switch (setting) {
					case "true" -> true;
					case "false" -> false;
					case "auto" -> url.startsWith("jdbc:h2:");
					default -> throw new IllegalStateException(
							"hapi.id-lookups-one-by-one must be auto, true or false, not " + setting);
				};
				log.info("id lookups: {} ({}={})", wanted ? "one indexed query per id" : "HAPI's one query",
						"hapi.id-lookups-one-by-one", setting);
				if (!wanted) {
					return bean;
				}
				inUse = true;
				return beans.createBean(OneByOneIdHelperService.class);
			}
		};
	}
}
